"""``fit``: one backward table for a target, bits and objective, with the evidence that it is optimal."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
from scipy.integrate import quad

from approxbp.fit import derivative, primitive, symmetry
from approxbp.fit.empirical import DEFAULT_BINS, Histogram, fit_histogram, load_samples
from approxbp.fit.official_constants import OFFICIAL
from approxbp.fit.result import OBJECTIVES, Evidence, FitResult, check_bits, sup_error, symmetry_defect
from approxbp.targets import Target, check_target, get_target


def _check(target: str, bits: int, objective: str) -> Target:
    check_target(target)
    check_bits(int(bits) if isinstance(bits, np.integer) else bits)
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid objectives: {', '.join(OBJECTIVES)}")
    return get_target(target)


def _tuple(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _primitive_quadrature(target: Target, a: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """J by scipy's adaptive quadrature, piece by piece between the knots (independent of our nodes)."""
    pieces = np.concatenate([[-np.inf], c, [np.inf]])
    total = error = 0.0
    for lo, hi in itertools.pairwise(pieces):
        if hi > lo:
            val, err = quad(lambda x: (float(target.f(np.array(x))) - float(np.maximum(x - c, 0.0) @ a)) ** 2,
                            lo, hi, epsabs=1e-15, epsrel=1e-13, limit=400)
            total, error = total + val, error + err
    return total, error


def _result(target: Target, bits: int, objective: str, t: np.ndarray, levels: np.ndarray, value: float,
            evidence: Evidence, **extra) -> FitResult:
    return FitResult(target.name, bits, objective, _tuple(t), _tuple(levels), float(value),
                     sup_error(target, t, levels), symmetry_defect(t, levels), evidence, **extra)


def _primitive_result(target: Target, bits: int, a: np.ndarray, c: np.ndarray, value: float,
                      levels: np.ndarray | None = None, **evidence):
    quad_value, quad_error = _primitive_quadrature(target, a, c)
    ev = Evidence(sum_a_residual=float(a.sum() - 1.0), moment_residual=float(a @ c),
                  quad_value=quad_value, quad_error=quad_error, **evidence)
    levels = np.concatenate([[0.0], np.cumsum(a)]) if levels is None else levels
    return _result(target, bits, "primitive", c, levels, value, ev, a=_tuple(a), c=_tuple(c))


def _fit_primitive(tgt: Target, bits: int) -> FitResult:
    """The global search, then exact symmetry where the optimum is symmetric to rounding (``symmetry``): J of the
    snapped table itself and the knot gradient there are reported."""
    search = primitive.fit_primitive(tgt, bits)
    sol = search.solution
    a, c, value, levels, grad_norm = sol.a, sol.c, sol.value, None, search.polished.grad_norm
    snapped = symmetry.snap_primitive(a, c)
    if snapped is not None:
        a, c, levels = snapped
        value = primitive.objective(tgt, a, c)
        grad_norm = float(np.max(np.abs(primitive.solve_knots(tgt, c).grad)))
    return _primitive_result(tgt, bits, a, c, value, levels, grad_norm=grad_norm,
                             hessian_min_eig=search.polished.hessian_min_eig, starts=search.starts,
                             hits=search.hits, distinct_minima=search.distinct_minima)


def _fit_derivative(tgt: Target, bits: int, w: derivative.Weight) -> FitResult:
    """The weighted step fit (both weights are even), snapped like the primitive one; the levels stay the
    interval means of h' to rounding, so the evidence is taken at the snapped table."""
    step, polished = derivative.fit_weighted(tgt, bits, w)
    if symmetry.is_symmetric(step.thresholds, step.levels):
        at = derivative.evaluate(tgt, w, symmetry.snap_thresholds(step.thresholds))
        step = dataclasses.replace(at, levels=symmetry.snap_levels(at.levels))
        polished = dataclasses.replace(polished, x=step.thresholds, value=step.value,
                                       grad_norm=float(np.max(np.abs(step.grad))))
    quad_value, quad_error, level_residual = derivative.quadrature_check(tgt, w, step)
    ev = Evidence(grad_norm=polished.grad_norm, hessian_min_eig=polished.hessian_min_eig, starts=1, hits=1,
                  quad_value=quad_value, quad_error=quad_error, level_residual=level_residual,
                  border_residual=step.border_residual)
    return _result(tgt, bits, "derivative", step.thresholds, step.levels, step.value, ev, weight=w.describe())


def fit(target: str = "gelu", bits: int = 2, objective: str = "primitive", samples=None, *,
        weight: str = "normal", range: float | None = None, bins: int = DEFAULT_BINS) -> FitResult:
    """Fit the backward table of Approx-BP for ``target`` with ``2**bits`` levels.

    objective: ``primitive`` (the paper's: integral (h - h~)^2 over R, h~ a constrained sum of 2^bits - 1 ReLUs),
    ``derivative`` (weighted L2 distance of h' and the step function; ``weight`` normal or uniform on
    [-range, range]), or ``empirical`` (mean squared error of h' on ``samples``: an array, a path to a
    .npy/.pt array or histogram .npz, or a ``Histogram``).
    """
    tgt = _check(target, bits, objective)
    if objective != "empirical" and samples is not None:
        raise ValueError(f"samples are used only by the empirical objective, not {objective!r}")
    if objective != "derivative" and (weight != "normal" or range is not None):
        raise ValueError(f"weight and range are used only by the derivative objective, not {objective!r}")
    if objective == "primitive":
        return _fit_primitive(tgt, bits)
    if objective == "derivative":
        return _fit_derivative(tgt, bits, derivative.Weight(weight, range))
    if samples is None:
        raise ValueError("the empirical objective needs samples (an array, a .npy/.pt/.npz path or a Histogram)")
    if isinstance(samples, Histogram):
        if samples.target != tgt.name:
            raise ValueError(f"histogram was built for target {samples.target!r}, not {tgt.name!r}")
        hist = samples
    elif isinstance(samples, (str, Path)):
        hist = load_samples(samples, tgt, bins)
    else:
        hist = Histogram.from_samples(tgt, np.asarray(samples), bins)
    emp = fit_histogram(hist, bits)
    ev = Evidence(border_optimal=emp.border_optimal, samples=float(hist.count.sum()))
    return _result(tgt, bits, objective, emp.thresholds, emp.levels, emp.value, ev)


def official(target: str) -> FitResult:
    """The official LowMemoryBP constants (ReGELU2 for ``gelu``, ReSiLU2 for ``silu``) with their J."""
    if target not in OFFICIAL:
        raise ValueError(f"no official constants for target {target!r}; available: {', '.join(OFFICIAL)}")
    tgt = get_target(target)
    a, c = (np.array(OFFICIAL[target][k]) for k in ("a", "c"))
    return _primitive_result(tgt, 2, a, c, primitive.objective(tgt, a, c))
