"""The activations Approx-BP approximates, each defined once, with the constants every part of the project reads.

Each target is one sympy expression (built on first use: importing this module loads no sympy or scipy, so the ops
can check a target's name cheaply); every numeric callable (value, first and second derivative) is derived from that
one expression, so the fitter, the proofs and the checks can never disagree about what "gelu" means.  The CPU
reference of the ops computes the same formulas with torch's own activations, QuickGELU as x * sigmoid(alpha x)
with QUICK_GELU_ALPHA below.  Adding a target is one entry in ``_FORMULAS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import sympy as sp

QUICK_GELU_ALPHA = 1.702  # QuickGELU (CLIP, HF "quick_gelu"): x * sigmoid(1.702 x)
GELU_TANH_KAPPA = 0.044715  # GELU's tanh form (GPT-2): x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
GELU_FORMS = {"none": "gelu", "tanh": "gelu_tanh"}  # F.gelu's ``approximate`` -> the target


def _exact(value: float):
    """The decimal constant as an exact sympy Rational (1.702 -> 851/500)."""
    import sympy as sp

    fraction = Fraction(str(value))
    return sp.Rational(fraction.numerator, fraction.denominator)


def _gelu(x):
    import sympy as sp

    return x / 2 * (1 + sp.erf(x / sp.sqrt(2)))


def _gelu_tanh(x):
    import sympy as sp

    return x / 2 * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (x + _exact(GELU_TANH_KAPPA) * x**3)))


def _silu(x):
    import sympy as sp

    return x / (1 + sp.exp(-x))


def _quick_gelu(x):
    import sympy as sp

    return x / (1 + sp.exp(-_exact(QUICK_GELU_ALPHA) * x))


_FORMULAS: dict[str, tuple[Callable, str]] = {
    "gelu": (_gelu, "GELU, exact erf form: x * Phi(x)"),
    "gelu_tanh": (_gelu_tanh, "GELU, tanh approximation (GPT-2, 'gelu_new', 'gelu_pytorch_tanh')"),
    "silu": (_silu, "SiLU / Swish: x * sigmoid(x)"),
    "quick_gelu": (_quick_gelu, f"QuickGELU (CLIP): x * sigmoid({QUICK_GELU_ALPHA} x)"),
}
TARGET_NAMES: tuple[str, ...] = tuple(_FORMULAS)


@cache
def symbol():
    """The real variable x of every target's expression."""
    import sympy as sp

    return sp.Symbol("x", real=True)


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
    import sympy as sp

    fn = sp.lambdify(symbol(), expr, modules=["scipy", "numpy"])

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
    if not isinstance(name, str) or name not in _FORMULAS:
        raise ValueError(f"unknown target {name!r}; valid targets: {', '.join(TARGET_NAMES)}")


@cache
def get_target(name: str) -> Target:
    """The target called ``name``; ValueError naming the valid choices otherwise."""
    import sympy as sp

    check_target(name)
    formula, description = _FORMULAS[name]
    x = symbol()
    expr = formula(x)
    d1 = sp.diff(expr, x)
    d2 = sp.diff(d1, x)
    f = _numeric(expr)
    tail = _tail_radius(f)
    clip = _DERIVATIVE_CLIP_IN_TAILS * tail
    return Target(name, expr, description, f, _numeric(d1, clip), _numeric(d2, clip), tail)

