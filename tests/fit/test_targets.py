import numpy as np
import pytest
from scipy.special import expit, ndtr

from approxbp.targets import TARGET_NAMES, get_target

X = np.linspace(-12.0, 12.0, 2001)
CLOSED_FORMS = {
    "gelu": lambda x: x * ndtr(x),
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x * expit(x),
    "quick_gelu": lambda x: x * expit(1.702 * x),
}


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_value_matches_independent_closed_form(name):
    np.testing.assert_allclose(get_target(name).f(X), CLOSED_FORMS[name](X), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_derivatives_match_finite_differences(name):
    t, h = get_target(name), 1e-5
    np.testing.assert_allclose(t.df(X), (t.f(X + h) - t.f(X - h)) / (2 * h), atol=1e-8)
    np.testing.assert_allclose(t.d2f(X), (t.df(X + h) - t.df(X - h)) / (2 * h), atol=1e-8)


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_relu_gap_is_even_and_vanishes_beyond_the_tail(name):
    t = get_target(name)
    np.testing.assert_allclose(t.relu_gap(X), t.relu_gap(-X), atol=1e-15)
    far = np.linspace(t.tail, 3 * t.tail, 50)
    assert np.all(t.relu_gap(far) ** 2 < 1e-36) and np.all(t.relu_gap(-far) ** 2 < 1e-36)
    assert t.relu_gap(np.array([t.tail - 1.0]))[0] ** 2 >= 1e-36 or t.relu_gap(np.array([1 - t.tail]))[0] ** 2 >= 1e-36


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_derivatives_have_their_limits_far_out(name):
    t = get_target(name)
    x = np.array([-1e6, -1e3, 1e3, 1e6, -np.inf, np.inf])
    np.testing.assert_allclose(t.df(x), [0, 0, 1, 1, 0, 1], atol=1e-30)
    assert np.all(np.isfinite(t.d2f(x)))


def test_unknown_target_names_the_choices():
    with pytest.raises(ValueError, match="valid targets: gelu, gelu_tanh, silu, quick_gelu"):
        get_target("relu6")
