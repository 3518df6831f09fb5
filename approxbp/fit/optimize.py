"""Local minimisation over increasing knots/borders, Newton polishing and second-order evidence."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

# value and gradient with respect to increasing points (knots or borders)
Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


def knots_from_params(p: np.ndarray) -> np.ndarray:
    """Unconstrained parameters -> increasing points: c_1 = p_1, c_k = c_{k-1} + exp(p_k)."""
    return np.cumsum(np.concatenate([p[:1], np.exp(p[1:])]))


def params_from_knots(c: np.ndarray) -> np.ndarray:
    return np.concatenate([c[:1], np.log(np.diff(c))])


def params_grad(p: np.ndarray, grad_c: np.ndarray) -> np.ndarray:
    """Chain rule for ``knots_from_params``: dJ/dp_k = exp(p_k) * sum_{m >= k} dJ/dc_m (p_1: no factor)."""
    tail_sums = np.cumsum(grad_c[::-1])[::-1]
    return tail_sums * np.concatenate([[1.0], np.exp(p[1:])])


def local_minimum(objective: Objective, start: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """L-BFGS-B over the increasing points in [lo, hi] (gaps between 1e-9 and the whole width)."""

    def fg(p: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = objective(knots_from_params(p))
        return value, params_grad(p, grad)

    width = hi - lo
    bounds = [(lo, hi)] + [(np.log(width * 1e-9), np.log(width))] * (start.size - 1)
    res = minimize(fg, params_from_knots(start), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"ftol": 0.0, "gtol": 1e-15, "maxiter": 3000, "maxcor": 30})
    return knots_from_params(res.x)


def hessian(objective: Objective, x: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """Symmetrised central-difference Hessian from the analytic gradient."""
    n = x.size
    h = np.empty((n, n))
    for k in range(n):
        e = np.zeros(n)
        e[k] = step
        h[k] = (objective(x + e)[1] - objective(x - e)[1]) / (2 * step)
    return (h + h.T) / 2


@dataclass(frozen=True)
class Polished:
    x: np.ndarray
    value: float
    grad_norm: float  # max |gradient| at x
    hessian_min_eig: float


def polish(objective: Objective, x: np.ndarray, iterations: int = 6) -> Polished:
    """Newton steps on the analytic gradient while they shrink it; returns the second-order evidence."""
    value, grad = objective(x)
    for _ in range(iterations):
        if np.max(np.abs(grad)) < 1e-15:
            break
        try:
            step = np.linalg.solve(hessian(objective, x), grad)
        except np.linalg.LinAlgError:
            break
        candidate = x - step
        if np.any(np.diff(candidate) <= 0):
            break
        new_value, new_grad = objective(candidate)
        if np.max(np.abs(new_grad)) >= np.max(np.abs(grad)) or new_value > value + 1e-12 * abs(value):
            break
        x, value, grad = candidate, new_value, new_grad
    eig = float(np.linalg.eigvalsh(hessian(objective, x))[0]) if x.size else 0.0
    return Polished(x, value, float(np.max(np.abs(grad), initial=0.0)), eig)
