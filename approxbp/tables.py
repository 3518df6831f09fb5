"""Backward tables of Approx-BP: the shipped defaults (from the generated ``approxbp.kernels.constants``) and
user tables (a ``FitResult`` or explicit thresholds/levels).  Pure Python: no torch import."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from approxbp.fit.result import MAX_BITS, SHIPPED_OBJECTIVES, FitResult, check_bits
from approxbp.kernels.constants import TABLES
from approxbp.targets import check_target


@dataclass(frozen=True)
class Table:
    """A step function: levels[j] on [thresholds[j-1], thresholds[j]) (right-continuous), 2**bits levels."""

    thresholds: tuple[float, ...]
    levels: tuple[float, ...]

    def __post_init__(self) -> None:
        t, lv = tuple(float(v) for v in self.thresholds), tuple(float(v) for v in self.levels)
        object.__setattr__(self, "thresholds", t)
        object.__setattr__(self, "levels", lv)
        if len(lv) not in {2**b for b in range(1, MAX_BITS + 1)}:
            raise ValueError(f"a table needs 2**bits levels with bits in 1..{MAX_BITS}, got {len(lv)} levels")
        if len(t) != len(lv) - 1:
            raise ValueError(f"a table with {len(lv)} levels needs {len(lv) - 1} thresholds, got {len(t)}")
        if not all(math.isfinite(v) for v in t + lv):
            raise ValueError("table thresholds and levels must be finite")
        if any(b <= a for a, b in itertools.pairwise(t)):
            raise ValueError(f"table thresholds must be strictly increasing, got {t}")

    @property
    def bits(self) -> int:
        return len(self.levels).bit_length() - 1

    @classmethod
    def from_fit(cls, result: FitResult) -> Table:
        return cls(result.thresholds, result.levels)


def default_table(target: str = "gelu", bits: int = 2, objective: str = "primitive") -> Table:
    """The emitted table for ``target``/``bits``/``objective`` (ValueError naming the valid choices)."""
    check_target(target)
    check_bits(bits)
    if objective not in SHIPPED_OBJECTIVES:
        raise ValueError(f"no shipped tables for objective {objective!r}; shipped: {', '.join(SHIPPED_OBJECTIVES)} "
                         "(fit empirical tables with approxbp.fit.fit and pass them as table=...)")
    entry = TABLES[f"{target}/{bits}/{objective}"]
    return Table(entry["thresholds"], entry["levels"])


def as_table(table: Table | FitResult | tuple | None, target: str, bits: int, objective: str) -> Table:
    """Normalise the ``table=`` argument of the ops: None -> the default, a FitResult, a Table, or a
    (thresholds, levels) pair."""
    if table is None:
        return default_table(target, bits, objective)
    if isinstance(table, Table):
        return table
    if isinstance(table, FitResult):
        return Table.from_fit(table)
    if isinstance(table, (tuple, list)) and len(table) == 2:
        return Table(*table)
    raise TypeError(f"table must be a Table, a FitResult or a (thresholds, levels) pair, got {type(table).__name__}")
