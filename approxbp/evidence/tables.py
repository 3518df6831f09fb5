"""The backward tables the evidence compares, each as the ``approxbp.convert`` options that install it.

kinds: "primitive" (the paper's objective: ReGELU2/ReSiLU2 at 2 bits), "derivative" (h' fitted by a step function
under a standard-normal weight), "empirical" (per-layer tables calibrated on the layer's own pre-activations) and
"relu" (1 bit: plain ReLU', the primitive objective's 1-bit optimum).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from approxbp.fit.result import check_bits, sup_error
from approxbp.tables import Table, default_table
from approxbp.targets import get_target

KINDS = ("primitive", "derivative", "empirical", "relu")


@dataclass(frozen=True)
class TableSpec:
    kind: str
    bits: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"table kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        check_bits(self.bits)
        if (self.kind == "relu" and self.bits != 1) or (self.kind == "primitive" and self.bits == 1):
            raise ValueError(f"{self.kind!r} tables have {'1 bit' if self.kind == 'relu' else '2..4 bits'} "
                             f"(the 1-bit primitive optimum is relu), got bits={self.bits}")

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.bits}"

    def convert_options(self, calibration_data: Iterable | None = None) -> dict:
        """kwargs of ``approxbp.convert`` (norms excluded) that install this table on every activation."""
        if self.kind == "empirical":
            if calibration_data is None:
                raise ValueError("empirical (per-layer calibrated) tables need calibration_data")
            return dict(approx="auto", bits=self.bits, calibration_data=calibration_data)
        objective = "derivative" if self.kind == "derivative" else "primitive"
        return dict(approx="auto", bits=self.bits, objective=objective)

    def shipped_table(self, target: str) -> Table:
        """The fixed table of ``target`` (not defined for per-layer empirical tables)."""
        if self.kind == "empirical":
            raise ValueError("empirical tables are fitted per layer; read them from the converted modules")
        return default_table(target, self.bits, "derivative" if self.kind == "derivative" else "primitive")


def specs(bits: Iterable[int] = (1, 2, 3, 4), kinds: Iterable[str] = KINDS) -> list[TableSpec]:
    """Every (kind, bits) that makes sense: relu at 1 bit, primitive at 2+ (its 1-bit optimum is relu), the
    derivative and empirical objectives at every bits."""
    return [TableSpec(kind, b) for kind in kinds for b in bits
            if not ((kind == "relu" and b != 1) or (kind == "primitive" and b == 1))]


def sup_gap(table: Table, target: str) -> float:
    """sup over x of |h'(x) - s(x)| for the step function s of ``table``: the factor of every Approx-BP bound."""
    return sup_error(get_target(target), np.asarray(table.thresholds), np.asarray(table.levels))
