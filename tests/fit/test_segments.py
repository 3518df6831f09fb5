import itertools

import numpy as np
import pytest

from approxbp.fit.segments import optimal_partition


def _cost(w, s1, s2, cuts):
    bounds = [0, *cuts, w.size]
    total = 0.0
    for i, j in itertools.pairwise(bounds):
        if w[i:j].sum() == 0:
            return np.inf
        total += s2[i:j].sum() - s1[i:j].sum() ** 2 / w[i:j].sum()
    return total


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("segments", [2, 3, 4])
def test_dynamic_program_matches_brute_force(seed, segments):
    rng = np.random.default_rng(seed)
    m = 10
    w = rng.integers(0, 4, m).astype(float)
    values = rng.normal(size=(m, 5))
    s1 = (values.mean(1) * w)
    s2 = (values**2).mean(1) * w
    if np.count_nonzero(w) < segments:
        with pytest.raises(ValueError, match="non-empty bins"):
            optimal_partition(w, s1, s2, segments)
        return
    cuts = optimal_partition(w, s1, s2, segments)
    assert np.all(np.diff(np.concatenate([[0], cuts, [m]])) > 0)
    brute = min(_cost(w, s1, s2, c) for c in itertools.combinations(range(1, m), segments - 1))
    assert _cost(w, s1, s2, cuts) == pytest.approx(brute, rel=1e-12, abs=1e-12)
