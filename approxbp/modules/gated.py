"""Fused gated MLP activation layers, out = h(gate) * up, with the Approx-BP backward for h (see approxbp.ops.gated).

They take ``(gate, up)``, as LLaMA/Mistral/Qwen (``act(gate_proj(x)) * up_proj(x)``) and T5/Gemma GeGLU
(``act(wi_0(x)) * wi_1(x)``) compute them: patch the MLP's forward to ``down(self.act(gate_proj(x), up_proj(x)))``.
Called with one tensor, its last dim is split in halves, (gate, up) = x.chunk(2, -1), the order of fused
gate_up projections (Phi-3); diffusers' GEGLU has the halves the other way round (``up, gate = proj(x).chunk(2, -1)``):
pass them explicitly.  Both halves are views of one storage, which autograd then saves once.
"""

from __future__ import annotations

from torch import Tensor, nn

from approxbp.fit.result import FitResult
from approxbp.modules.approx_act import describe_table
from approxbp.ops.approx_act import resolve_table
from approxbp.ops.gated import approx_geglu, approx_swiglu
from approxbp.tables import Table
from approxbp.targets import GELU_FORMS


def _halves(gate: Tensor, up: Tensor | None) -> tuple[Tensor, Tensor]:
    if up is not None:
        return gate, up
    if gate.dim() == 0 or gate.shape[-1] % 2:
        raise ValueError(f"a single input is split in two halves on its last dim, which must be even; got shape "
                         f"{tuple(gate.shape)}")
    first, second = gate.chunk(2, -1)
    return first, second


class ApproxSwiGLU(nn.Module):
    """silu(gate) * up; backward from the step table of gate (default: ReSiLU2's 2-bit table)."""

    def __init__(self, table: Table | FitResult | tuple | list | None = None):
        super().__init__()
        self.table = resolve_table(table, "silu", 2, "primitive")

    def set_table(self, table: Table | FitResult | tuple | list) -> None:
        if table is None:
            raise TypeError("set_table needs a Table, a FitResult or a (thresholds, levels) pair, got None")
        self.table = resolve_table(table, "silu", 2, "primitive")

    def forward(self, gate: Tensor, up: Tensor | None = None) -> Tensor:
        return approx_swiglu(*_halves(gate, up), table=self.table)

    def extra_repr(self) -> str:
        return f"bits={self.table.bits}, {describe_table(self.table, 'silu')}"


class ApproxGeGLU(nn.Module):
    """gelu(gate) * up, ``approximate`` "none" (erf) or "tanh" as in F.gelu; backward from the step table of gate
    (default: the 2-bit primitive table of that GELU form)."""

    def __init__(self, approximate: str = "none", table: Table | FitResult | tuple | list | None = None):
        super().__init__()
        if approximate not in GELU_FORMS:
            raise ValueError(f"approximate must be one of {tuple(GELU_FORMS)}, got {approximate!r}")
        self.approximate = approximate
        self.table = resolve_table(table, GELU_FORMS[approximate], 2, "primitive")

    def set_table(self, table: Table | FitResult | tuple | list) -> None:
        if table is None:
            raise TypeError("set_table needs a Table, a FitResult or a (thresholds, levels) pair, got None")
        self.table = resolve_table(table, GELU_FORMS[self.approximate], 2, "primitive")

    def forward(self, gate: Tensor, up: Tensor | None = None) -> Tensor:
        return approx_geglu(*_halves(gate, up), table=self.table, approximate=self.approximate)

    def extra_repr(self) -> str:
        target = GELU_FORMS[self.approximate]
        return f"approximate={self.approximate!r}, bits={self.table.bits}, {describe_table(self.table, target)}"
