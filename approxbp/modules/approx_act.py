"""Approx-BP activation layers: exact activation forward, step-function backward from k-bit codes.

Each layer carries its own table (a ``Table``: plain Python attributes, not parameters or buffers), so a model can
use a different calibrated table in every layer; ``set_table`` swaps it.  The table is not part of ``state_dict``
(converting activations adds no keys; a converted model with folded norms does not take the original checkpoint, see
``approxbp.conversion.core``): keep calibrated tables next to the checkpoint.
"""

from __future__ import annotations

from torch import Tensor, nn

from approxbp.fit.result import FitResult
from approxbp.ops.approx_act import approx_act, resolve_table
from approxbp.tables import SHIPPED_OBJECTIVES, Table, default_table


def describe_table(table: Table, target: str) -> str:
    """'objective=...' for a shipped table of ``target``, else the rounded thresholds and levels."""
    for objective in SHIPPED_OBJECTIVES:
        if table == default_table(target, table.bits, objective):
            return f"objective={objective!r}"
    return (f"thresholds=({', '.join(f'{t:.4g}' for t in table.thresholds)}), "
            f"levels=({', '.join(f'{v:.4g}' for v in table.levels)})")


class ApproxAct(nn.Module):
    """h(x) for ``target`` in gelu, gelu_tanh, silu, quick_gelu, with the Approx-BP backward dy * step(x).

    ``table``: None for the shipped (target, bits, objective) table, or a Table, a FitResult of this target, or a
    (thresholds, levels) pair (its bits replace ``bits``).  Saves ceil(numel * pack_bits / 8) bytes per call."""

    def __init__(self, target: str = "gelu", bits: int = 2, objective: str = "primitive",
                 table: Table | FitResult | tuple | list | None = None):
        super().__init__()
        self.target = target
        self.table = resolve_table(table, target, bits, objective)

    def set_table(self, table: Table | FitResult | tuple | list) -> None:
        """Use ``table`` (a Table, a FitResult of this layer's target, or a (thresholds, levels) pair) from now on."""
        if table is None:
            raise TypeError("set_table needs a Table, a FitResult or a (thresholds, levels) pair, got None")
        self.table = resolve_table(table, self.target, self.bits, "primitive")

    @property
    def bits(self) -> int:
        return self.table.bits

    def forward(self, x: Tensor) -> Tensor:
        return approx_act(x, self.target, table=self.table)

    def extra_repr(self) -> str:
        return f"target={self.target!r}, bits={self.bits}, {describe_table(self.table, self.target)}"


class ReGELU2(ApproxAct):
    """ReGELU2 (drop-in for nn.GELU()): exact erf GELU forward, the paper's 2-bit backward unless ``table`` is given."""

    def __init__(self, table: Table | FitResult | tuple | list | None = None):
        super().__init__("gelu", 2, "primitive", table)


class ReSiLU2(ApproxAct):
    """ReSiLU2 (drop-in for nn.SiLU()): exact SiLU forward, the paper's 2-bit backward unless ``table`` is given."""

    def __init__(self, table: Table | FitResult | tuple | list | None = None):
        super().__init__("silu", 2, "primitive", table)
