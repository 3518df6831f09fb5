"""Exact symmetry for optima that are symmetric up to rounding.

Every target has h(x) - h(-x) = x, so h'(x) + h'(-x) = 1, and the primitive objective (over R) and the derivative
objective (under a weight even in x) are invariant under the reflection
    t -> -t reversed,   L -> 1 - L reversed,   (a, c) -> (a reversed, -c reversed).
A fitted table whose symmetry defect max(|t_i + t_{n+1-i}|, |L_j + L_{n-j} - 1|) is at most SNAP_TOLERANCE (the
searches stop about 1e-15..1e-10 away from a symmetric optimum; asymmetric optima found are >= 1 away) is replaced by
its exact symmetrisation:
    t_i = (t_i - t_{n+1-i}) / 2 below the middle, -t mirrored above, the middle threshold exactly 0;
    L_j = (L_j + 1 - L_{n-j}) / 2 below the middle, rounded to a multiple of 2^-52, and L_{n-j} = 1 - L_j;
    primitive: c = t, a_i = L_i - L_{i-1} below and at the middle, mirrored above.
The 2^-52 grid (the spacing of doubles in [1, 2)) makes 1 - L_j, every a_i and every partial sum of a exact, so
L_j + L_{n-j} = 1, sum a = 1 and L = (0, cumsum a) hold in floating point (sum a c = 0 term pair by term pair), and
x = 0 (either sign) takes the level right of the middle: h~'(0) = L_{(n+1)/2}.  Empirical tables (thresholds on
histogram bin edges, samples of no particular symmetry) are left as fitted.
"""

from __future__ import annotations

import numpy as np

from approxbp.fit.result import symmetry_defect

SNAP_TOLERANCE = 1e-6
_GRID = 2.0**52


def is_symmetric(thresholds: np.ndarray, levels: np.ndarray) -> bool:
    return symmetry_defect(np.asarray(thresholds), np.asarray(levels)) <= SNAP_TOLERANCE


def snap_thresholds(t: np.ndarray) -> np.ndarray:
    """Exactly odd thresholds (an odd count 2^bits - 1, the middle one 0.0)."""
    t = np.asarray(t, dtype=np.float64)
    half = t.size // 2
    low = (t[:half] - t[::-1][:half]) / 2
    return np.concatenate([low, [0.0], -low[::-1]])


def snap_levels(levels: np.ndarray) -> np.ndarray:
    """Levels with L_j + L_{n-j} = 1 exactly (an even count 2^bits)."""
    levels = np.asarray(levels, dtype=np.float64)
    half = levels.size // 2
    low = np.round((levels[:half] + 1.0 - levels[::-1][:half]) / 2 * _GRID) / _GRID
    return np.concatenate([low, 1.0 - low[::-1]])


def snap_primitive(a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(a, c, levels) exactly symmetric, or None when the primitive fit (a, c) is not symmetric to rounding.
    L_0 = 0 and L_n = sum a = 1 are the constraints, so they are taken exactly before snapping."""
    a, c = np.asarray(a, dtype=np.float64), np.asarray(c, dtype=np.float64)
    levels = np.concatenate([[0.0], np.cumsum(a)[:-1], [1.0]])
    if not is_symmetric(c, levels):
        return None
    levels = snap_levels(levels)
    half = a.size // 2
    low = np.diff(levels[: half + 2])  # a_1 .. a_{half + 1}, the middle one last
    return np.concatenate([low, low[-2::-1]]), snap_thresholds(c), levels
