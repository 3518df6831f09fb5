"""The gradient-error bounds of Approx-BP for one MLP layer, and the piecewise-linear h~ whose derivative is a table.

One MLP layer: z = X W1^T + b1 (X: n x d, rows = tokens), a = h(z), g = dL/da the upstream gradient; exact
dz = g * h'(z), Approx-BP dz~ = g * s(z), delta = sup|h' - s| (proved in ``proofs/grad_bound.py``):

- (ii)  ||dW1~ - dW1||_F <= ||X||_2 ||g||_F delta, and a posteriori ||X||_2 ||g * (h'(z) - s(z))||_F;
- (iii) ||dX~ - dX||_F <= ||W1||_2 ||g||_F delta (the part of the input gradient that flows through W1);
- (iv)  with an upstream error e = g~ - g: ||dW1~ - dW1||_F <= ||X||_2 (||s||_inf ||e||_F + delta ||g||_F).

For a gated MLP (a = act(gate) * up) the gate's upstream gradient is g * up: every bound holds for gate_proj with g
replaced by g * up.  All norms are taken in float64 of the captured float32 tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigvalsh

from approxbp.calibration import exact_derivative
from approxbp.evidence.tables import sup_gap
from approxbp.fit.primitive import objective
from approxbp.ops.step import step
from approxbp.tables import Table
from approxbp.targets import get_target


def spectral_norm(matrix: torch.Tensor) -> float:
    """||M||_2 = sqrt(largest eigenvalue of the smaller Gram matrix), in float64 (LAPACK's syevr for that one
    eigenvalue: exact to rounding, unlike a power iteration, which only gives a lower estimate)."""
    m = matrix.detach().double()
    gram = (m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T).numpy()
    (top,) = eigvalsh(gram, subset_by_index=[len(gram) - 1, len(gram) - 1])
    return math.sqrt(max(float(top), 0.0))


def frobenius(t: torch.Tensor) -> float:
    """||t||_F, accumulated in float64."""
    return float(torch.linalg.vector_norm(t, dtype=torch.float64))


@dataclass(frozen=True)
class LayerTerms:
    """The exact run's quantities of one MLP layer under one table, flattened to rows (float64)."""

    x_2: float  # ||X||_2
    w1_2: float  # ||W1||_2
    g_f: float  # ||g||_F (g * up for a gated MLP)
    gap_f: float  # ||g * (h'(z) - s(z))||_F
    delta: float  # sup|h' - s|
    s_inf: float  # max |level|
    J: float | None  # the paper's objective of the table (None: infinite)
    predicted_f: float  # ||(g * (s(z) - h'(z)))^T X||_F: the single-layer weight-gradient error, from the exact run

    def single_layer(self) -> dict[str, float]:
        """Bounds (ii) a priori, (ii) a posteriori and (iii), unnormalised."""
        return {"(ii) a-priori": self.x_2 * self.g_f * self.delta, "(ii) a-posteriori": self.x_2 * self.gap_f,
                "(iii) input": self.w1_2 * self.g_f * self.delta}

    def upstream(self, e_f: float) -> float:
        """Bound (iv) for the upstream error norm ``e_f`` = ||e||_F."""
        return self.x_2 * (self.s_inf * e_f + self.delta * self.g_f)


def layer_terms(x: torch.Tensor, x_2: float, w1_2: float, g: torch.Tensor, z: torch.Tensor, table: Table,
                target: str) -> LayerTerms:
    """``x``: fc1's input with ``x_2`` = ||X||_2, ``w1_2`` = ||W1||_2, ``z``: fc1's (gate_proj's) output, ``g``: the
    upstream gradient at the activation's output (times up for a gated MLP).  s(z) is evaluated exactly as the
    float32 op does (fp32 comparisons against the fp32-rounded thresholds)."""
    dz_error = (g.double() * (step(z, table).double() - exact_derivative(z, target))).reshape(-1, z.shape[-1])
    predicted = dz_error.T @ x.double().reshape(-1, x.shape[-1])
    return LayerTerms(x_2, w1_2, frobenius(g), frobenius(dz_error), sup_gap(table, target),
                      max(abs(v) for v in table.levels), primitive_objective(table, target), frobenius(predicted))


def primitive_objective(table: Table, target: str) -> float | None:
    """The paper's J = integral (h - h~)^2 of the table's primitive, or None where it is infinite: a table whose
    left level is not 0, whose levels do not end at 1, or whose knots violate sum a c = 0."""
    levels, knots = np.asarray(table.levels), np.asarray(table.thresholds)
    if abs(levels[0]) > 1e-9:
        return None
    try:
        return objective(get_target(target), np.diff(levels), knots)
    except ValueError:
        return None


def piecewise_linear(x: torch.Tensor, table: Table) -> torch.Tensor:
    """h~(x) = L_0 x + sum_j (L_j - L_{j-1}) relu(x - t_j): the primitive of the step function s of ``table`` with
    h~(x) - L_0 x -> 0 as x -> -inf (for L_0 = 0, the paper's integral_{-inf}^x s).  Autograd gives h~' = s."""
    knots = torch.tensor(table.thresholds, dtype=x.dtype, device=x.device)
    jumps = torch.tensor(np.diff(table.levels), dtype=x.dtype, device=x.device)
    return table.levels[0] * x + torch.relu(x.unsqueeze(-1) - knots) @ jumps


class PiecewiseLinearAct(torch.nn.Module):
    """The activation h~ of a table in the forward pass too (the h~-network of the evidence's part C)."""

    def __init__(self, table: Table):
        super().__init__()
        self.table = table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return piecewise_linear(x, self.table)

    def extra_repr(self) -> str:
        return f"bits={self.table.bits}"
