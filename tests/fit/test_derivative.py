import itertools

import numpy as np
import pytest
from scipy.integrate import quad

from approxbp.fit import fit
from approxbp.fit.derivative import Weight, evaluate
from approxbp.targets import TARGET_NAMES, get_target


@pytest.mark.parametrize("name", TARGET_NAMES)
@pytest.mark.parametrize("bits", [1, 2, 3])
def test_lloyd_max_conditions_hold(name, bits, fitted):
    r = fitted(name, bits, "derivative")
    t = get_target(name)
    th, lv = np.array(r.thresholds), np.array(r.levels)
    # border: h'(t_j) is the midpoint of its two levels
    np.testing.assert_allclose(t.df(th), (lv[:-1] + lv[1:]) / 2, atol=1e-9)
    # level: weighted mean of h' on its interval, recomputed here by adaptive quadrature
    edges = np.concatenate([[-12.0], th, [12.0]])
    for j, (a, b) in enumerate(itertools.pairwise(edges)):
        num = quad(lambda x: float(np.exp(-x * x / 2) * t.df(np.array(x))), a, b, epsabs=1e-14)[0]
        den = quad(lambda x: float(np.exp(-x * x / 2)), a, b, epsabs=1e-14)[0]
        assert lv[j] == pytest.approx(num / den, abs=1e-9)
    ev = r.evidence
    assert ev.grad_norm < 1e-10 and ev.hessian_min_eig > 0 and ev.level_residual < 1e-9
    assert ev.quad_value == pytest.approx(r.objective_value, rel=1e-9)


def test_fewbit_reference_table_is_reproduced():
    """fewbit's unweighted 2-bit GELU table (Novikov et al., ICML 2023): a uniform weight on a wide range."""
    r = fit("gelu", 2, "derivative", weight="uniform", range=100.0)
    np.testing.assert_allclose(r.thresholds, [-0.4536, 0.0, 0.4536], atol=1e-4)
    np.testing.assert_allclose(r.levels, [-0.0015, 0.3251, 0.6750, 1.0015], atol=1.5e-4)
    assert r.weight == "uniform[-100,100]"


def test_gradient_formula_matches_finite_differences():
    t, w = get_target("silu"), Weight("normal")
    th = np.array([-1.3, -0.2, 0.5, 1.9])
    g = evaluate(t, w, th).grad
    for k in range(th.size):
        e = np.zeros(th.size)
        e[k] = 1e-6
        fd = (evaluate(t, w, th + e).value - evaluate(t, w, th - e).value) / 2e-6
        assert g[k] == pytest.approx(fd, rel=1e-5, abs=1e-11)


def test_derivative_table_beats_the_primitive_table_on_its_own_metric(fitted):
    t, w = get_target("gelu"), Weight("normal")
    d, p = fitted("gelu", 2, "derivative"), fitted("gelu", 2, "primitive")
    # evaluate the primitive table's borders with its own levels under the derivative metric
    step = lambda x, r: np.asarray(r.levels)[np.searchsorted(r.thresholds, x, side="right")]  # noqa: E731
    x = np.linspace(-12, 12, 400001)
    dens = np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    mse = lambda r: np.trapezoid(dens * (t.df(x) - step(x, r)) ** 2, x)  # noqa: E731
    assert mse(d) < mse(p)
    assert mse(d) == pytest.approx(d.objective_value, rel=1e-4)
    assert evaluate(t, w, np.array(p.thresholds)).value > d.objective_value


@pytest.mark.parametrize("kw, msg", [(dict(weight="cauchy"), "unknown weight"),
                                     (dict(weight="uniform"), "positive finite --range"),
                                     (dict(weight="uniform", range=-1.0), "positive finite --range"),
                                     (dict(range=3.0), "only to --weight uniform")])
def test_bad_weights(kw, msg):
    with pytest.raises(ValueError, match=msg):
        fit("gelu", 2, "derivative", **kw)
