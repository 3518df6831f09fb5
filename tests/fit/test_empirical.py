import numpy as np
import pytest
import torch

from approxbp.fit import Histogram, fit
from approxbp.fit.empirical import load_samples
from approxbp.targets import get_target


@pytest.fixture(scope="module")
def normal_samples():
    return np.random.default_rng(1).normal(size=400_000)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_normal_samples_agree_with_the_normal_weighted_derivative_fit(normal_samples, bits, fitted):
    emp = fit("gelu", bits, "empirical", samples=normal_samples)
    der = fitted("gelu", bits, "derivative")
    np.testing.assert_allclose(emp.thresholds, der.thresholds, atol=0.02)
    np.testing.assert_allclose(emp.levels, der.levels, atol=0.01)
    assert emp.objective_value == pytest.approx(der.objective_value, rel=0.02)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_objective_and_levels_are_exact_sample_statistics(normal_samples, bits):
    x = normal_samples * 1.7 + 0.3
    r = fit("silu", bits, "empirical", samples=x)
    t = get_target("silu")
    code = np.searchsorted(r.thresholds, x, side="right")
    d = t.df(x)
    assert r.objective_value == pytest.approx(np.mean((d - np.asarray(r.levels)[code]) ** 2), rel=1e-10)
    for j, level in enumerate(r.levels):
        assert level == pytest.approx(d[code == j].mean(), rel=1e-10, abs=1e-13)
    assert r.evidence.border_optimal and r.evidence.samples == x.size


def test_fit_cost_is_independent_of_sample_count(normal_samples):
    hist_small = Histogram.from_samples(get_target("gelu"), normal_samples[:50_000])
    hist_big = Histogram.from_samples(get_target("gelu"), normal_samples)
    assert hist_small.count.size == hist_big.count.size == 2048
    assert hist_big.count.sum() == normal_samples.size


def test_dynamic_program_beats_every_perturbed_table(normal_samples):
    """Global optimality over bin borders: no random re-choice of borders on the bin grid does better."""
    t = get_target("gelu")
    hist = Histogram.from_samples(t, normal_samples, bins=64)
    r = fit("gelu", 2, "empirical", samples=hist)
    rng = np.random.default_rng(0)
    for _ in range(300):
        cuts = np.sort(rng.choice(np.arange(1, 64), 3, replace=False))
        bounds = np.concatenate([[0], cuts, [64]])
        w, s1, s2 = (np.add.reduceat(v, bounds[:-1]) for v in (hist.count, hist.sum_d, hist.sum_d2))
        assert np.sum(s2 - s1**2 / w) / w.sum() >= r.objective_value - 1e-15


def test_sample_files(tmp_path, normal_samples):
    x = normal_samples[:20_000]
    np.save(tmp_path / "x.npy", x)
    torch.save(torch.from_numpy(x).float(), tmp_path / "x.pt")
    a = fit("gelu", 2, "empirical", samples=tmp_path / "x.npy")
    b = fit("gelu", 2, "empirical", samples=str(tmp_path / "x.pt"))
    np.testing.assert_allclose(a.thresholds, b.thresholds, atol=1e-6)
    assert a == fit("gelu", 2, "empirical", samples=x)


def test_counts_histogram_matches_samples(tmp_path, normal_samples, fitted):
    edges = np.linspace(-6, 6, 1201)
    counts, _ = np.histogram(normal_samples, edges)
    np.savez(tmp_path / "h.npz", edges=edges, counts=counts)
    from_hist = fit("gelu", 2, "empirical", samples=tmp_path / "h.npz")
    np.testing.assert_allclose(from_hist.thresholds, fitted("gelu", 2, "derivative").thresholds, atol=0.03)


@pytest.mark.parametrize("samples, msg", [(np.array([]), "non-empty"), (np.array([1.0, np.nan]), "finite"),
                                          (np.ones(100), "non-empty bins cannot make 4 levels")])
def test_bad_samples(samples, msg):
    with pytest.raises(ValueError, match=msg):
        fit("gelu", 2, "empirical", samples=samples)


def test_samples_only_with_empirical_and_required_there():
    with pytest.raises(ValueError, match="only by the empirical"):
        fit("gelu", 2, "primitive", samples=np.zeros(3))
    with pytest.raises(ValueError, match="needs samples"):
        fit("gelu", 2, "empirical")


def test_histogram_of_another_target_is_rejected(normal_samples):
    with pytest.raises(ValueError, match="built for target 'silu'"):
        fit("gelu", 2, "empirical", samples=Histogram.from_samples(get_target("silu"), normal_samples[:1000]))


def test_unsupported_file(tmp_path):
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match="unsupported samples file"):
        load_samples(tmp_path / "x.csv", get_target("gelu"))
