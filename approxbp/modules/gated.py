"""Fused gated MLP activation layers, out = h(gate) * up, with the Approx-BP backward for h (see approxbp.ops.gated).

They take ``(gate, up)``, as LLaMA/Mistral/Qwen (``act(gate_proj(x)) * up_proj(x)``) and T5/Gemma GeGLU
(``act(wi_0(x)) * wi_1(x)``) compute them: patch the MLP's forward to ``down(self.act(gate_proj(x), up_proj(x)))``.
Called with one tensor, its last dim is split in halves, (gate, up) = x.chunk(2, -1), the order of fused
gate_up projections (Phi-3); diffusers' GEGLU has the halves the other way round (``up, gate = proj(x).chunk(2, -1)``):
pass them explicitly.  Both halves are views of one storage, which autograd then saves once.

``input_dtype`` (default None: as given) casts gate and up to that dtype first, so that the op, what it keeps (gate,
up) and its output are in it: QLoRA under bf16 autocast, whose 4-bit layers return fp32 under peft's recipe, keeps
them in bf16 with ``input_dtype=torch.bfloat16`` (``convert(gated_dtype=...)``); the gradients flow back through the
casts into the callers' dtypes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from approxbp.fit.result import FitResult
from approxbp.modules.approx_act import describe_table
from approxbp.ops.approx_act import resolve_table
from approxbp.ops.gated import approx_geglu, approx_swiglu
from approxbp.tables import Table
from approxbp.targets import GELU_FORMS

INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_input_dtype(dtype: torch.dtype | None, name: str = "input_dtype") -> torch.dtype | None:
    if dtype is not None and dtype not in INPUT_DTYPES:
        raise ValueError(f"{name} must be None or one of {', '.join(map(str, INPUT_DTYPES))}, got {dtype!r}")
    return dtype


def _halves(gate: Tensor, up: Tensor | None, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    if dtype is not None:  # one cast of a [gate; up] projection output: its halves share one storage
        gate, up = gate.to(dtype), None if up is None else up.to(dtype)
    if up is not None:
        return gate, up
    if gate.dim() == 0 or gate.shape[-1] % 2:
        raise ValueError(f"a single input is split in two halves on its last dim, which must be even; got shape "
                         f"{tuple(gate.shape)}")
    first, second = gate.chunk(2, -1)
    return first, second


def _dtype_repr(dtype: torch.dtype | None) -> str:
    return "" if dtype is None else f", input_dtype={dtype}"


class ApproxSwiGLU(nn.Module):
    """silu(gate) * up; backward from the step table of gate (default: ReSiLU2's 2-bit table); gate and up cast to
    ``input_dtype`` first unless it is None."""

    def __init__(self, table: Table | FitResult | tuple | list | None = None, input_dtype: torch.dtype | None = None):
        super().__init__()
        self.table = resolve_table(table, "silu", 2, "primitive")
        self.input_dtype = check_input_dtype(input_dtype)

    def set_table(self, table: Table | FitResult | tuple | list) -> None:
        if table is None:
            raise TypeError("set_table needs a Table, a FitResult or a (thresholds, levels) pair, got None")
        self.table = resolve_table(table, "silu", 2, "primitive")

    def forward(self, gate: Tensor, up: Tensor | None = None) -> Tensor:
        return approx_swiglu(*_halves(gate, up, self.input_dtype), table=self.table)

    def extra_repr(self) -> str:
        return f"bits={self.table.bits}, {describe_table(self.table, 'silu')}{_dtype_repr(self.input_dtype)}"


class ApproxGeGLU(nn.Module):
    """gelu(gate) * up, ``approximate`` "none" (erf) or "tanh" as in F.gelu; backward from the step table of gate
    (default: the 2-bit primitive table of that GELU form); gate and up cast to ``input_dtype`` first unless None."""

    def __init__(self, approximate: str = "none", table: Table | FitResult | tuple | list | None = None,
                 input_dtype: torch.dtype | None = None):
        super().__init__()
        if approximate not in GELU_FORMS:
            raise ValueError(f"approximate must be one of {tuple(GELU_FORMS)}, got {approximate!r}")
        self.approximate = approximate
        self.table = resolve_table(table, GELU_FORMS[approximate], 2, "primitive")
        self.input_dtype = check_input_dtype(input_dtype)

    def set_table(self, table: Table | FitResult | tuple | list) -> None:
        if table is None:
            raise TypeError("set_table needs a Table, a FitResult or a (thresholds, levels) pair, got None")
        self.table = resolve_table(table, GELU_FORMS[self.approximate], 2, "primitive")

    def forward(self, gate: Tensor, up: Tensor | None = None) -> Tensor:
        return approx_geglu(*_halves(gate, up, self.input_dtype), table=self.table, approximate=self.approximate)

    def extra_repr(self) -> str:
        target = GELU_FORMS[self.approximate]
        return (f"approximate={self.approximate!r}, bits={self.table.bits}, {describe_table(self.table, target)}"
                f"{_dtype_repr(self.input_dtype)}")
