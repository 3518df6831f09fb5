"""Tables and curves shared by the activation figures: the shipped tables, h~ of a table, and error measures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from approxbp.fit import FitResult
from approxbp.fit.quadrature import nodes
from approxbp.fit.result import sup_error
from approxbp.kernels.constants import COMMAND, TABLES
from approxbp.targets import get_target


@dataclass(frozen=True)
class Activation:
    target: str
    label: str  # the activation's name
    approx_label: str  # the paper's name of its 2-bit Approx-BP version
    span: float  # the plots show [-span, span]


ACTIVATIONS = (Activation("gelu", "GELU", "ReGELU2", 5.0), Activation("silu", "SiLU", "ReSiLU2", 9.0))
NORMAL_SUPPORT = 12.0  # the standard-normal weight below 1e-31 beyond this radius


@dataclass(frozen=True)
class Curve:
    """One backward table: thresholds t, levels L, and for primitive fits h~ = sum a_i relu(x - c_i)."""

    label: str
    thresholds: tuple[float, ...]
    levels: tuple[float, ...]
    a: tuple[float, ...] | None = None
    c: tuple[float, ...] | None = None
    objective_value: float | None = None

    def step(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.levels)[np.searchsorted(self.thresholds, x, side="right")]

    def primitive(self, x: np.ndarray) -> np.ndarray:
        """h~: sum a_i relu(x - c_i) for a primitive fit, else the step function's integral from 0 (h~(0) = 0 =
        h(0) for GELU and SiLU): L_0 x + sum_j (L_j - L_{j-1}) (relu(x - t_j) - relu(-t_j))."""
        if self.a is not None:
            return np.maximum(x[:, None] - np.asarray(self.c), 0.0) @ np.asarray(self.a)
        t, jumps = np.asarray(self.thresholds), np.diff(self.levels)
        return self.levels[0] * x + (np.maximum(x[:, None] - t, 0.0) - np.maximum(-t, 0.0)) @ jumps

    def normal_weighted_error(self, target: str) -> float:
        """E = integral phi(x) (h'(x) - s(x))^2 dx (phi: standard normal density), by composite Gauss-Legendre
        quadrature between the thresholds on [-12, 12]; the derivative objective minimises it."""
        edges = np.concatenate([[-NORMAL_SUPPORT], self.thresholds, [NORMAL_SUPPORT]])
        q = nodes(edges[:-1], edges[1:])
        phi = np.exp(-q.x**2 / 2) / np.sqrt(2 * np.pi)
        return float(q.integrate(phi * (get_target(target).df(q.x) - np.asarray(self.levels)[q.segment]) ** 2).sum())

    def sup_error(self, target: str) -> float:
        """sup |h' - s| over R (the factor of the elementwise gradient error bound)."""
        return sup_error(get_target(target), np.asarray(self.thresholds), np.asarray(self.levels))

    def describe(self, target: str) -> dict:
        return {"label": self.label, "thresholds": list(self.thresholds), "levels": list(self.levels),
                "a": None if self.a is None else list(self.a), "c": None if self.c is None else list(self.c),
                "objective_value": self.objective_value,
                "sup_abs_h_prime_minus_step": self.sup_error(target),
                "normal_weighted_error": self.normal_weighted_error(target)}


def from_fit(result: FitResult, label: str) -> Curve:
    return Curve(label, result.thresholds, result.levels, result.a, result.c, result.objective_value)


def shipped(target: str, bits: int, objective: str, label: str) -> Curve:
    """A table shipped in ``approxbp.kernels.constants`` (written by ``python -m approxbp.fit --target all --emit``)."""
    e = TABLES[f"{target}/{bits}/{objective}"]
    return Curve(label, tuple(e["thresholds"]), tuple(e["levels"]), e["a"] and tuple(e["a"]),
                 e["c"] and tuple(e["c"]), e["objective_value"])


SHIPPED_SOURCE = f"approxbp.kernels.constants (written by `{COMMAND}`)"
