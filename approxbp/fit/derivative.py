"""Step-function fits of h' itself (fewbit-style) under a weight w, and on samples of real inputs.

Derivative objective: E(t) = integral w(x) (h'(x) - S_t(x))^2 dx / integral w, S_t the step function with
borders t_1 < ... < t_n and levels L_0..L_n.  Lloyd-Max conditions at an optimum:
    L_j = mean of h' under w on (t_j, t_{j+1})        (so only the borders need a search)
    h'(t_j) = (L_{j-1} + L_j) / 2                      (dE/dt_j = w(t_j) (L_j - L_{j-1}) (L_{j-1} + L_j - 2 h'(t_j)))
Global search: exact per-cell statistics on a fine grid and a dynamic program over all grid borders
(``segments.optimal_partition``), then the continuous borders by Newton-type refinement of E(t).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import quad

from approxbp.fit.optimize import Polished, local_minimum, polish
from approxbp.fit.quadrature import nodes
from approxbp.fit.segments import optimal_partition
from approxbp.targets import Target

WEIGHTS = ("normal", "uniform")
_NORMAL_RADIUS = 12.0  # the standard normal density is < 6e-32 beyond
_GRID_CELLS = 2400


@dataclass(frozen=True)
class Weight:
    """A weight on the real line: ``normal`` (standard normal density) or ``uniform`` on [-range, range]."""

    kind: str = "normal"
    range: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in WEIGHTS:
            raise ValueError(f"unknown weight {self.kind!r}; valid weights: {', '.join(WEIGHTS)}")
        if self.kind == "uniform" and not (self.range is not None and np.isfinite(self.range) and self.range > 0):
            raise ValueError(f"the uniform weight needs a positive finite --range, got {self.range}")
        if self.kind == "normal" and self.range is not None:
            raise ValueError("--range applies only to --weight uniform")

    @property
    def support(self) -> tuple[float, float]:
        r = _NORMAL_RADIUS if self.kind == "normal" else float(self.range)
        return -r, r

    def density(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "normal":
            return np.exp(-(x**2) / 2.0) / np.sqrt(2 * np.pi)  # the standard normal density (as scipy.stats)
        return np.where(np.abs(x) <= self.range, 0.5 / self.range, 0.0)

    def describe(self) -> str:
        return "normal" if self.kind == "normal" else f"uniform[-{self.range:g},{self.range:g}]"


@dataclass(frozen=True)
class StepFit:
    thresholds: np.ndarray
    levels: np.ndarray
    value: float  # mean squared error of the step function against h'
    grad: np.ndarray  # d value / d thresholds
    border_residual: float  # max |h'(t_j) - (L_{j-1} + L_j)/2|


def _interval_stats(target: Target, weight: Weight, borders: np.ndarray):
    lo, hi = weight.support
    edges = np.concatenate([[lo], borders, [hi]])
    q = nodes(edges[:-1], edges[1:])
    w = weight.density(q.x)
    d = target.df(q.x)
    return q.integrate(w), q.integrate(w * d), q.integrate(w * d * d)


def evaluate(target: Target, weight: Weight, t: np.ndarray) -> StepFit:
    """Best levels for the borders ``t``, the weighted mean squared error, its gradient and the residuals."""
    mass, s1, s2 = _interval_stats(target, weight, t)
    total = mass.sum()
    if np.any(mass <= 0):
        raise ValueError("an interval of the step function carries no weight")
    levels = s1 / mass
    value = float(np.sum(s2 - 2 * levels * s1 + levels**2 * mass) / total)
    dt = target.df(t)
    grad = weight.density(t) * (levels[1:] - levels[:-1]) * (2 * dt - levels[:-1] - levels[1:]) / total
    border = float(np.max(np.abs(dt - (levels[:-1] + levels[1:]) / 2), initial=0.0))
    return StepFit(t, levels, value, grad, border)


def fit_weighted(target: Target, bits: int, weight: Weight) -> tuple[StepFit, Polished]:
    n = 2**bits - 1
    lo, hi = weight.support
    edges = np.linspace(lo, hi, _GRID_CELLS + 1)
    q = nodes(edges[:-1], edges[1:])
    w = weight.density(q.x)
    d = target.df(q.x)
    cuts = optimal_partition(q.integrate(w), q.integrate(w * d), q.integrate(w * d * d), n + 1)
    start = edges[cuts]

    def objective(t: np.ndarray) -> tuple[float, np.ndarray]:
        s = evaluate(target, weight, t)
        return s.value, s.grad

    best = polish(objective, local_minimum(objective, start, lo, hi))
    return evaluate(target, weight, best.x), best


def quadrature_check(target: Target, weight: Weight, step: StepFit) -> tuple[float, float, float]:
    """The objective again by scipy's adaptive quadrature, interval by interval: (value, error estimate,
    max |level - weighted mean of h' on its interval|)."""
    lo, hi = weight.support
    edges = np.concatenate([[lo], step.thresholds, [hi]])

    def integral(fn, a: float, b: float) -> tuple[float, float]:
        return quad(lambda x: float(fn(np.array(x))), a, b, epsabs=1e-15, epsrel=1e-13, limit=400)[:2]

    total = error = 0.0
    level_residual = 0.0
    for level, a, b in zip(step.levels, edges[:-1], edges[1:], strict=False):
        val, err = integral(lambda x, level=level: weight.density(x) * (target.df(x) - level) ** 2, a, b)
        mass = integral(weight.density, a, b)[0]
        mean = integral(lambda x: weight.density(x) * target.df(x), a, b)[0] / mass
        total, error = total + val, error + err
        level_residual = max(level_residual, abs(level - mean))
    return total, error, level_residual
