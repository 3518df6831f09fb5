"""Triton kernels of gated MLP activations with an Approx-BP backward: out = h(gate) * up (SwiGLU: h = silu,
GeGLU: h = gelu).

The backward needs h(gate) exactly (d_up = dy h(gate)) and up (d_gate = dy up h~'(gate)), so gate and up are
saved and h(gate), code(gate) are recomputed; see ``approxbp/ops/gated.py`` for why that is the smallest set.
Every intermediate is rounded to the storage dtype where the unfused ``approx_act(gate) * up`` rounds it, so the
results are those of the unfused composition, computed in one pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .approx_act import ELEMENTS_PER_PROGRAM, NUM_WARPS, activation, flat_offsets, from_fp32, step_code, to_fp32
from .launch import on_device

FP32_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _gated_fwd_kernel(gate_ptr, up_ptr, out_ptr, n, TARGET: tl.constexpr, BLOCK: tl.constexpr):
    """a = rnd(h(gate)); out = rnd(a * up), rnd the rounding to the storage dtype."""
    offs = flat_offsets(tl.program_id(0), BLOCK)
    mask = offs < n
    gate = tl.load(gate_ptr + offs, mask=mask, other=0.0)
    up = to_fp32(tl.load(up_ptr + offs, mask=mask, other=0.0))
    a = to_fp32(from_fp32(activation(to_fp32(gate), TARGET), gate.dtype))
    tl.store(out_ptr + offs, from_fp32(a * up, gate.dtype), mask=mask)


@triton.jit
def _gated_bwd_kernel(dy_ptr, gate_ptr, up_ptr, table_ptr, dgate_ptr, dup_ptr, n,
                      TARGET: tl.constexpr, N_THRESHOLDS: tl.constexpr, BLOCK: tl.constexpr):
    """d_up = rnd(dy * a), a = rnd(h(gate));  d_gate = rnd(rnd(dy * up) * L[code(gate)]), NaN where gate is not
    finite (|gate| <= FP32_MAX is false for +-inf and NaN)."""
    offs = flat_offsets(tl.program_id(0), BLOCK)
    mask = offs < n
    gate = tl.load(gate_ptr + offs, mask=mask, other=0.0)
    gf = to_fp32(gate)
    up = to_fp32(tl.load(up_ptr + offs, mask=mask, other=0.0))
    dy = to_fp32(tl.load(dy_ptr + offs, mask=mask, other=0.0))
    a = to_fp32(from_fp32(activation(gf, TARGET), gate.dtype))
    tl.store(dup_ptr + offs, from_fp32(dy * a, gate.dtype), mask=mask)
    da = to_fp32(from_fp32(dy * up, gate.dtype))
    level = tl.load(table_ptr + N_THRESHOLDS + step_code(gf, table_ptr, N_THRESHOLDS)).to(tl.float32)
    level = tl.where(tl.abs(gf) <= FP32_MAX, level, float("nan"))
    tl.store(dgate_ptr + offs, from_fp32(da * level, gate.dtype), mask=mask)


def gated_forward(gate: torch.Tensor, up: torch.Tensor, target: str, out: torch.Tensor) -> None:
    """Write h(gate) * up into ``out``; all contiguous fp16/bf16/fp32 of one shape and dtype."""
    n = gate.numel()
    if n:
        on_device(_gated_fwd_kernel, gate)[(triton.cdiv(n, ELEMENTS_PER_PROGRAM),)](
            gate, up, out, n, TARGET=target, BLOCK=ELEMENTS_PER_PROGRAM, num_warps=NUM_WARPS)


def gated_backward(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, table: torch.Tensor, target: str,
                   d_gate: torch.Tensor, d_up: torch.Tensor) -> None:
    """Write the gradients into ``d_gate``, ``d_up``; all contiguous, ``table`` of 2 * levels - 1 entries."""
    n = gate.numel()
    if n:
        on_device(_gated_bwd_kernel, gate)[(triton.cdiv(n, ELEMENTS_PER_PROGRAM),)](
            dy, gate, up, table, d_gate, d_up, n, TARGET=target, N_THRESHOLDS=table.numel() // 2,
            BLOCK=ELEMENTS_PER_PROGRAM, num_warps=NUM_WARPS)
