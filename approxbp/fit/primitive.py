"""The paper's objective: J(a, c) = integral over R of (h(x) - sum_i a_i relu(x - c_i))^2 dx.

Structure used here (derivation in ``proofs/``): under sum a = 1 and sum a c = 0, h~ is the continuous
piecewise-linear function with knots c_1 < ... < c_n that is 0 left of c_1 and x right of c_n, so it is fixed
by its knot values v_1 = 0, v_n = c_n and the n - 2 free values v_2..v_{n-1}.  For fixed knots J is a
quadratic in the free values (a tridiagonal P1 mass-matrix system), so only the knots need a nonlinear search:
    J*(c) = min_v J(c, v),   dJ*/dc_k = -2 integral (h - h~) (delta_kn - h~'(x)) hat_k(x) dx
(envelope theorem; hat_k is the P1 hat function of knot k).  a are the slope jumps of h~ at the knots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri  # the standard normal quantile; scipy.stats would add 0.3 s of imports

from approxbp.fit.optimize import Polished, local_minimum, polish
from approxbp.fit.quadrature import nodes
from approxbp.targets import Target


@dataclass(frozen=True)
class KnotSolution:
    c: np.ndarray  # knots, increasing
    v: np.ndarray  # values of h~ at the knots
    a: np.ndarray  # ReLU coefficients (slope jumps)
    value: float  # J
    grad: np.ndarray  # dJ*/dc


def _tail_bounds(target: Target, c_first: float, c_last: float) -> tuple[list[float], list[float]]:
    """(lo, hi) of the two tails (-inf, c_1] and [c_n, inf), truncated where the integrand is < 1e-36."""
    far = target.tail
    return [min(-far, c_first - 1.0), c_last], [c_first, max(far, c_last + 1.0)]


def _tail_integrands(h: np.ndarray, x: np.ndarray, left: np.ndarray) -> np.ndarray:
    """h^2 left of c_1 (where ``left``), (h - x)^2 right of c_n."""
    return np.where(left, h**2, (h - x) ** 2)


def _tails(target: Target, c_first: float, c_last: float) -> float:
    """integral_{-inf}^{c_1} h^2 + integral_{c_n}^{inf} (h - x)^2, truncated where the integrand is < 1e-36."""
    q = nodes(*_tail_bounds(target, c_first, c_last))
    left, right = q.integrate(_tail_integrands(target.f(q.x), q.x, q.segment == 0))
    return float(left + right)


def solve_knots(target: Target, c: np.ndarray) -> KnotSolution:
    """Best h~ for the knots ``c`` (increasing), with J and its gradient with respect to the knots."""
    c = np.asarray(c, dtype=np.float64)
    n = c.size
    if n == 1:
        if c[0] != 0.0:
            raise ValueError("with one ReLU the constraints force c = (0,)")
        return KnotSolution(c, np.zeros(1), np.ones(1), _tails(target, 0.0, 0.0), np.zeros(1))
    width = c[1:] - c[:-1]
    # one set of nodes: the n - 1 knot intervals, then the two tails
    tail_lo, tail_hi = _tail_bounds(target, c[0], c[-1])
    q = nodes(np.concatenate([c[:-1], tail_lo]), np.concatenate([c[1:], tail_hi]))
    h_every = target.f(q.x)
    k = int(q.segment.searchsorted(n - 1))  # the first tail node
    x, w, segment, h = q.x[:k], q.w[:k], q.segment[:k], h_every[:k]
    tail_segment = q.segment[k:] - (n - 1)
    tail_integrand = _tail_integrands(h_every[k:], q.x[k:], tail_segment == 0)
    tail = np.bincount(tail_segment, weights=q.w[k:] * tail_integrand, minlength=2)
    tails = float(tail[0] + tail[1])

    def integrate(values: np.ndarray) -> np.ndarray:
        return np.bincount(segment, weights=w * values, minlength=n - 1)

    u = (x - c[segment]) / width[segment]  # local coordinate in [0, 1]
    one_minus_u = 1.0 - u
    # Right-hand side b_k = integral h * hat_k; the P1 mass matrix M of the free values v_2..v_{n-1} is
    # tridiagonal (w_{k-1} + w_k) / 3 on, w_k / 6 off the diagonal; v_n = c_n enters the last row.
    b = np.zeros(n)
    b[:-1] += integrate(h * one_minus_u)
    b[1:] += integrate(h * u)
    v = np.zeros(n)
    v[-1] = c[-1]
    if n > 2:
        m = n - 2
        third, sixth = width / 3.0, width / 6.0
        mass = np.zeros((m, m))
        mass.flat[:: m + 1] = third[1:] + third[:-1]
        mass.flat[1 :: m + 1] = mass.flat[m :: m + 1] = sixth[1:-1]
        last_column = np.zeros(m)
        last_column[-1] = sixth[-1]
        rhs = b[1:-1] - last_column * v[-1]
        # 1 x 1 (n = 3, the 2-bit tables): the division LAPACK does, without np.linalg.solve's ~15 us of overhead
        v[1:-1] = rhs / mass[0, 0] if m == 1 else np.linalg.solve(mass, rhs)
    slope = (v[1:] - v[:-1]) / width
    a = np.diff(np.concatenate([[0.0], slope, [1.0]]))
    approx = v[:-1][segment] * one_minus_u + v[1:][segment] * u
    resid = h - approx
    value = float(integrate(resid**2).sum()) + tails
    # Gradient (envelope theorem): d/dc_k of h~ with the free values fixed is (delta_kn - slope) * hat_k.
    s = slope[segment]
    resid_u = resid * u
    left_part = integrate(resid * one_minus_u * s)  # knot j = segment, moving it changes h~ by -s * hat_j
    right_part = integrate(resid_u * s)
    right_plain = integrate(resid_u)
    grad = np.zeros(n)
    grad[:-1] += 2.0 * left_part
    grad[1:] += 2.0 * right_part
    grad[-1] += -2.0 * right_plain[-1]
    return KnotSolution(c, v, a, value, grad)


def objective(target: Target, a: np.ndarray, c: np.ndarray) -> float:
    """J(a, c) for any coefficients that satisfy the constraints to 1e-6 (e.g. published constants).

    The right tail is taken with h~ = x there, i.e. the constraint residual is neglected (it would make the
    integral over R diverge, so every published J is computed this way or truncated)."""
    a = np.asarray(a, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    if abs(a.sum() - 1.0) > 1e-6 or abs(a @ c) > 1e-6:
        raise ValueError(f"constraints violated: sum a - 1 = {a.sum() - 1:.3g}, sum a c = {a @ c:.3g}")
    order = np.argsort(c)
    a, c = a[order], c[order]
    if c.size == 1:
        return _tails(target, c[0], c[0])
    q = nodes(c[:-1], c[1:])
    relus = np.maximum(q.x[:, None] - c[None, :], 0.0) @ a
    return float(q.integrate((target.f(q.x) - relus) ** 2).sum()) + _tails(target, c[0], c[-1])


@dataclass(frozen=True)
class Search:
    solution: KnotSolution
    polished: Polished
    starts: int
    hits: int
    distinct_minima: int


def _starts(target: Target, n: int) -> list[np.ndarray]:
    """Deterministic starting knots: uniform and normal-quantile shapes at several scales and shifts, plus
    sorted uniform draws from a fixed seed (no symmetry is imposed)."""
    shapes = [np.linspace(-1.0, 1.0, n), ndtri(np.arange(1, n + 1) / (n + 1)) / ndtri(n / (n + 1))]
    starts = [scale * (shape + shift) for scale in np.geomspace(0.5, target.tail / 2, 6)
              for shape in shapes for shift in (0.0, 0.25)]
    rng = np.random.default_rng(20240624)
    starts += [np.sort(rng.uniform(-s, s, n)) for s in np.geomspace(1.0, target.tail / 2, 4) for _ in range(6)]
    return starts


_HOPS = 16


def fit_primitive(target: Target, bits: int) -> Search:
    """Global minimum of J over the knots: multi-start L-BFGS-B on J*(c), then Newton polishing."""
    n = 2**bits - 1
    if n == 1:
        sol = solve_knots(target, np.zeros(1))
        return Search(sol, Polished(sol.c, sol.value, 0.0, 0.0), 1, 1, 1)

    solved: dict[bytes, KnotSolution] = {}  # L-BFGS-B and the final checks revisit about a tenth of the points

    def objective_and_grad(c: np.ndarray) -> tuple[float, np.ndarray]:
        key = c.tobytes()
        if key not in solved:
            solved[key] = solve_knots(target, c)
        return solved[key].value, solved[key].grad

    far = 2 * target.tail
    descents: dict[bytes, np.ndarray] = {}  # a repeated start (n = 3: the two shapes coincide) descends once

    def descend(start: np.ndarray) -> np.ndarray:
        key = start.tobytes()
        if key not in descents:
            descents[key] = local_minimum(objective_and_grad, start, -far, far)
        return descents[key]

    ends = [descend(c0) for c0 in _starts(target, n)]
    values = [objective_and_grad(c)[0] for c in ends]
    # basin hopping from the incumbent: jitter every knot by a fraction of its neighbouring gaps
    rng = np.random.default_rng(7)
    for _ in range(_HOPS):
        incumbent = ends[int(np.argmin(values))]
        gaps = np.diff(incumbent)
        scale = np.minimum(np.concatenate([gaps, gaps[-1:]]), np.concatenate([gaps[:1], gaps]))
        trial = np.sort(incumbent + rng.uniform(-0.9, 0.9, n) * scale)
        ends.append(descend(trial))
        values.append(objective_and_grad(ends[-1])[0])
    values = np.array(values)
    best = int(np.argmin(values))
    close = np.abs(values - values[best]) <= 1e-9 * values[best]
    distinct = np.unique(np.round(values / (values[best] * 1e-9))).size
    polished = polish(objective_and_grad, ends[best])
    return Search(solve_knots(target, polished.x), polished, len(ends), int(close.sum()), int(distinct))
