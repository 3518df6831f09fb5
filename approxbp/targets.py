"""The activations Approx-BP approximates, each defined once as a sympy expression.

Every numeric callable (value, first and second derivative) is derived from that one expression, so the
fitter, the proofs and the kernels' CPU reference can never disagree about what "gelu" means.
Adding a target is one entry in ``_DEFINITIONS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import sympy as sp

X = sp.Symbol("x", real=True)

_DEFINITIONS: dict[str, tuple[sp.Expr, str]] = {
    "gelu": (X / 2 * (1 + sp.erf(X / sp.sqrt(2))), "GELU, exact erf form: x * Phi(x)"),
    "gelu_tanh": (
        X / 2 * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (X + sp.Rational(44715, 1000000) * X**3))),
        "GELU, tanh approximation (GPT-2, 'gelu_new', 'gelu_pytorch_tanh')",
    ),
    "silu": (X / (1 + sp.exp(-X)), "SiLU / Swish: x * sigmoid(x)"),
    "quick_gelu": (X / (1 + sp.exp(-sp.Rational(1702, 1000) * X)), "QuickGELU (CLIP): x * sigmoid(1.702 x)"),
}

# |h(x) - relu(x)|^2 is below this beyond the target's tail radius, so integrals over R may stop there.
_TAIL_TOLERANCE = 1e-36


@dataclass(frozen=True)
class Target:
    """One activation h with numeric h, h', h'' (vectorised over numpy float64 arrays)."""

    name: str
    expr: sp.Expr
    description: str
    f: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    df: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    d2f: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    tail: float  # radius R with (h - relu)^2 < 1e-36 for |x| >= R

    def relu_gap(self, x: np.ndarray) -> np.ndarray:
        """h(x) - relu(x), which is square-integrable for every shipped target."""
        x = np.asarray(x, dtype=np.float64)
        return self.f(x) - np.maximum(x, 0.0)


# The lambdified derivative formulas evaluate inf/inf far out in the tails, so derivatives are evaluated on
# the input clipped to twice the tail radius, where they equal their limits (0 or 1, and 0) to ~1e-30.
_DERIVATIVE_CLIP_IN_TAILS = 2.0


def _numeric(expr: sp.Expr, clip: float | None = None) -> Callable[[np.ndarray], np.ndarray]:
    fn = sp.lambdify(X, expr, modules=["scipy", "numpy"])

    def call(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if clip is not None:
            x = np.clip(x, -clip, clip)
        with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x << 0, giving the right limit 0
            return np.broadcast_to(np.asarray(fn(x), dtype=np.float64), x.shape).copy()

    return call


def _tail_radius(f: Callable[[np.ndarray], np.ndarray]) -> float:
    grid = np.arange(1.0, 200.0)
    gap = np.maximum((f(grid) - grid) ** 2, f(-grid) ** 2)
    small = gap < _TAIL_TOLERANCE
    # first radius from which the gap stays below tolerance
    beyond = np.flatnonzero(~small)
    return float(grid[beyond[-1] + 1]) if beyond.size else float(grid[0])


def check_target(name: str) -> None:
    """ValueError naming the valid choices unless ``name`` is a target (cheap: builds nothing)."""
    if not isinstance(name, str) or name not in _DEFINITIONS:
        raise ValueError(f"unknown target {name!r}; valid targets: {', '.join(TARGET_NAMES)}")


@cache
def get_target(name: str) -> Target:
    """The target called ``name``; ValueError naming the valid choices otherwise."""
    check_target(name)
    expr, description = _DEFINITIONS[name]
    d1 = sp.diff(expr, X)
    d2 = sp.diff(d1, X)
    f = _numeric(expr)
    tail = _tail_radius(f)
    clip = _DERIVATIVE_CLIP_IN_TAILS * tail
    return Target(name, expr, description, f, _numeric(d1, clip), _numeric(d2, clip), tail)


TARGET_NAMES: tuple[str, ...] = tuple(_DEFINITIONS)
