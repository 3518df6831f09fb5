"""Streaming pre-activation histograms: exact statistics, chunk-independent, and the fitted table's objective is the
exact sample mean of (h' - step)^2."""

import numpy as np
import pytest
import torch

from approxbp.calibration import PreactivationHistogram, exact_derivative
from approxbp.fit import fit
from approxbp.targets import TARGET_NAMES, get_target


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_exact_derivative_matches_the_symbolic_one(target):
    x = torch.linspace(-30, 30, 20001, dtype=torch.float64)
    assert np.allclose(exact_derivative(x, target).numpy(), get_target(target).df(x.numpy()), rtol=0, atol=1e-12)


def test_chunking_does_not_change_the_statistics():
    x = torch.randn(50_000) * 2 + 0.3
    whole, parts = PreactivationHistogram("silu"), PreactivationHistogram("silu")
    whole.update(x)
    parts.update(x)  # the first batch sets the grid; chunks after it must add up to one update
    for chunk in x.view(50, -1, 100):
        parts.update(chunk)
    whole.update(x)
    assert torch.equal(whole.count, parts.count)
    assert torch.allclose(whole.sum_d, parts.sum_d, rtol=1e-12) and torch.allclose(whole.sum_d2, parts.sum_d2,
                                                                                   rtol=1e-12)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_objective_is_the_exact_sample_mean(bits):
    x = torch.randn(20_000, dtype=torch.float64) * 1.5
    hist = PreactivationHistogram("gelu")
    hist.update(x)
    r = hist.fit(bits)
    direct = np.mean((get_target("gelu").df(x.numpy()) - r.step(x.numpy())) ** 2)
    assert r.objective_value == pytest.approx(direct, rel=1e-10)
    assert set(r.thresholds) <= set(hist.inner.tolist())  # borders on the grid


def test_normal_samples_reproduce_the_normal_weight_table():
    hist = PreactivationHistogram("gelu")
    for _ in range(4):
        hist.update(torch.randn(250_000))
    r, ref = hist.fit(2), fit("gelu", 2, "derivative")
    assert np.allclose(r.thresholds, ref.thresholds, atol=0.01) and np.allclose(r.levels, ref.levels, atol=0.003)


def test_nonfinite_values_are_counted_apart_and_bad_input_is_named():
    hist = PreactivationHistogram("gelu")
    hist.update(torch.tensor([float("nan"), float("inf"), 0.5, -1.0]))
    assert hist.nonfinite == 2 and hist.samples == 2
    with pytest.raises(TypeError, match="floating point"):
        hist.update(torch.arange(3))
    with pytest.raises(ValueError, match="unknown target"):
        PreactivationHistogram("relu")
    with pytest.raises(ValueError, match="no finite pre-activations"):
        PreactivationHistogram("silu").histogram()


def test_grid_follows_the_scale_of_the_first_batch():
    small, large = PreactivationHistogram("silu"), PreactivationHistogram("silu")
    small.update(torch.randn(10_000) * 0.05)
    large.update(torch.randn(10_000) * 100)
    assert 0.1 < small.inner[-1] < 0.5 and large.inner[-1] == 16.0
    r = small.fit(2)
    assert max(abs(t) for t in r.thresholds) < 0.2  # borders resolved inside the small inputs' range
