"""FitResult: one backward table (thresholds and levels) with the evidence that it is optimal."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from approxbp.targets import Target

OBJECTIVES = ("primitive", "derivative", "empirical")
SHIPPED_OBJECTIVES = ("primitive", "derivative")  # fitted once for every target and bits, in kernels/constants.py
MAX_BITS = 4


def check_bits(bits: int) -> None:
    """ValueError unless ``bits`` is a Python int in 1..MAX_BITS (bool excluded)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")


@dataclass(frozen=True)
class Evidence:
    """Why the table is a minimum of its objective (fields not defined by an objective are None)."""

    grad_norm: float | None = None  # max |d objective / d (knots or borders)| at the result
    hessian_min_eig: float | None = None  # > 0: strict local minimum (central differences of the gradient)
    starts: int | None = None  # local searches run
    hits: int | None = None  # of which reached the best value (to 1e-9 relative)
    distinct_minima: int | None = None  # distinct local minima seen (values 1e-9 apart)
    sum_a_residual: float | None = None  # sum a - 1
    moment_residual: float | None = None  # sum a c
    quad_value: float | None = None  # the objective again, by scipy's adaptive quadrature
    quad_error: float | None = None  # its error estimate
    level_residual: float | None = None  # max |level - mean of h' on its interval|
    border_residual: float | None = None  # max |h'(t_j) - (L_{j-1} + L_j)/2|
    border_optimal: bool | None = None  # empirical: no border move to a neighbouring bin edge helps
    samples: float | None = None  # empirical: number of samples


@dataclass(frozen=True)
class FitResult:
    target: str
    bits: int
    objective: str
    thresholds: tuple[float, ...]  # 2^bits - 1 increasing borders of the step function
    levels: tuple[float, ...]  # 2^bits values of h~' (left to right)
    objective_value: float
    sup_error: float  # sup over x of |h'(x) - step(x)|: the elementwise gradient error bound factor
    symmetry_defect: float  # max(|t_i + t_{n+1-i}|, |L_j + L_{n-j} - 1|): 0 for a symmetric table
    evidence: Evidence
    a: tuple[float, ...] | None = None  # primitive only: h~(x) = sum a_i relu(x - c_i)
    c: tuple[float, ...] | None = None
    weight: str | None = None  # derivative only: the weight of the L2 distance

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def step(self, x: np.ndarray) -> np.ndarray:
        """The step function h~'(x) (right-continuous: x == t_j takes the level to the right)."""
        levels = np.asarray(self.levels)
        return levels[np.searchsorted(np.asarray(self.thresholds), np.asarray(x, dtype=np.float64), side="right")]


def symmetry_defect(thresholds: np.ndarray, levels: np.ndarray) -> float:
    return float(max(np.max(np.abs(thresholds + thresholds[::-1])), np.max(np.abs(levels + levels[::-1] - 1.0))))


def sup_error(target: Target, thresholds: np.ndarray, levels: np.ndarray) -> float:
    """sup |h' - step| over R: interval ends (both one-sided limits), extrema of h', and the limits at +-inf."""
    from scipy.optimize import brentq  # here: importing FitResult (as the ops do) loads no scipy

    grid = np.linspace(-target.tail, target.tail, 40001)
    d2 = target.d2f(grid)
    extrema = [brentq(lambda x: float(target.d2f(np.array(x))), grid[i], grid[i + 1])
               for i in np.flatnonzero(np.sign(d2[:-1]) * np.sign(d2[1:]) < 0)]
    points = np.concatenate([grid, np.asarray(extrema), thresholds])
    index = np.searchsorted(thresholds, points, side="right")
    d = target.df(points)
    err = np.abs(d - levels[index])
    left = np.abs(target.df(thresholds) - levels[:-1])  # one-sided limits from the left of each border
    return float(max(err.max(), left.max(initial=0.0), abs(levels[0]), abs(1.0 - levels[-1])))
