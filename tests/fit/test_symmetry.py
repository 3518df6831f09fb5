"""Symmetric optima are emitted exactly symmetric (middle threshold 0, L_j + L_{n-j} = 1, a and c mirrored), so that
x = 0 takes the level right of the middle; asymmetric optima are left alone."""

import numpy as np
import pytest

from approxbp.fit import symmetry
from approxbp.fit.result import symmetry_defect
from approxbp.kernels.constants import TABLES


def assert_exactly_symmetric(t, levels):
    t, levels = np.asarray(t), np.asarray(levels)
    assert t[t.size // 2] == 0.0
    assert np.array_equal(t, -t[::-1]) and np.array_equal(levels + levels[::-1], np.ones(levels.size))


@pytest.mark.parametrize("key", sorted(TABLES))
def test_shipped_tables_are_exactly_symmetric_or_clearly_not(key):
    """Before snapping the symmetric tables had middle thresholds of 1e-16 .. 2e-12 (GELU 2-bit primitive:
    +1.1e-16, SiLU: -3.8e-16) and defects up to 2.6e-10."""
    e = TABLES[key]
    t, levels = np.array(e["thresholds"]), np.array(e["levels"])
    defect = symmetry_defect(t, levels)
    assert defect == 0.0 or defect > 0.1, defect
    if defect == 0.0:
        assert_exactly_symmetric(t, levels)
        if e["a"] is not None:
            a, c = np.array(e["a"]), np.array(e["c"])
            assert np.array_equal(a, a[::-1]) and np.array_equal(c, t) and a.sum() == 1.0
            assert np.array_equal(levels, np.concatenate([[0.0], np.cumsum(a)]))


def test_snap_primitive_is_exact_and_moves_only_rounding():
    e = TABLES["silu/4/primitive"]
    rng = np.random.default_rng(0)
    a = np.array(e["a"]) * (1 + 1e-12 * rng.standard_normal(15))
    c = np.array(e["c"]) + 1e-10 * rng.standard_normal(15)
    a_s, c_s, levels = symmetry.snap_primitive(a, c)
    assert_exactly_symmetric(c_s, levels)
    assert np.array_equal(a_s, a_s[::-1]) and a_s.sum() == 1.0 and abs(a_s @ c_s) < 1e-15
    assert np.array_equal(levels, np.concatenate([[0.0], np.cumsum(a_s)]))
    np.testing.assert_allclose(c_s, c, atol=1e-9)
    np.testing.assert_allclose(levels[1:], np.cumsum(a), atol=1e-10)


def test_snap_leaves_asymmetric_fits_alone():
    e = TABLES["gelu/3/primitive"]  # the paper's objective has an asymmetric 3-bit GELU optimum
    assert symmetry.snap_primitive(e["a"], e["c"]) is None
    assert not symmetry.is_symmetric(np.array([-1.0, 2e-6, 1.0]), np.array([0.0, 0.3, 0.7, 1.0]))
    assert symmetry.is_symmetric(np.array([-1.0, 1e-7, 1.0]), np.array([0.0, 0.3, 0.7, 1.0]))


def test_snap_levels_rounds_to_the_2_52_grid():
    levels = symmetry.snap_levels(np.array([-0.1, 0.3 + 1e-13, 0.7, 1.1]))
    assert np.array_equal(levels + levels[::-1], np.ones(4))
    assert np.array_equal(levels * 2.0**52, np.round(levels * 2.0**52))
    np.testing.assert_allclose(levels, [-0.1, 0.3, 0.7, 1.1], atol=1e-13)
