"""Fused gated MLP activations with an Approx-BP backward: out = h(gate) * up, h = silu (SwiGLU: LLaMA, Mistral, Qwen)
or gelu (GeGLU: T5 v1.1 / Flan-T5 with the tanh form, Gemma, diffusers' GEGLU), one kernel forward, one backward.

    d_up   = dy * h(gate)                  needs h(gate) exactly
    d_gate = dy * up * step(gate)          needs up and code(gate)

What must be kept: up, h(gate) exactly, and code(gate).  h is not injective (GELU and SiLU have a minimum below 0),
so h(gate) does not give code(gate), while gate gives both: the smallest set is {gate, up}, and h(gate) and code(gate)
are recomputed in the backward.  The unfused ``approx_act(gate) * up`` keeps the packed code, h(gate) and up (two
elements plus bits/8 bytes); the baseline ``F.silu(gate) * up`` keeps gate, silu(gate) and up.  Saved bytes per
element (autograd, unique storages), plus 56 bytes for the fp64 table, one storage shared by all calls:

    dtype        F.silu(gate) * up, F.gelu(gate) * up        approx_swiglu, approx_geglu
    fp16/bf16    6                                           4
    fp32         12                                          8
    fp64         24                                          16

When gate and up are halves of one projection output (``proj(x).chunk(2, -1)``), they share one storage, which is
saved once.  Since gate itself is kept, this op saves the same bytes as an exact fused op that recomputes h'(gate);
the step backward is kept so that a gated MLP trains with the same gradient rule as the ungated ReGELU2/ReSiLU2.

Non-finite gates: d_gate is NaN where gate is +-inf or NaN, as torch's; gate is saved, so this is exact per element
(d_up = dy * h(gate) is non-finite there by itself).

Forward-mode AD gives the tangent up h~'(gate) t_gate + h(gate) t_up (``approxbp.ops.tangent``).

Rounding follows the unfused ``approx_act(gate) * up`` step by step (h(gate) is rounded to the storage dtype before
the product, dy * up before it meets the level), so results equal the composition of the unfused ops; the CPU
reference uses torch's own activations.  The ops are ``torch.library`` custom ops (``approxbp::gated_fwd`` /
``_bwd``): Triton kernels (``approxbp.kernels.gated``) for CUDA tensors, the reference below otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from approxbp.fit.result import FitResult
from approxbp.ops import native
from approxbp.ops.approx_act import (
    PACK_BITS,
    activation,
    activation_reference,
    resolve_table,
    table_from_tensor,
    table_on,
)
from approxbp.ops.backend import block_size, blocks, check_float_tensor, contiguous, kernel, runs_kernels, runs_native
from approxbp.ops.step import all_finite, codes_into, compute_dtype, level_tensor, rounded_thresholds, step
from approxbp.ops.tangent import delta, needs_composite, with_tangent
from approxbp.tables import Table
from approxbp.targets import GELU_FORMS

__all__ = ["approx_geglu", "approx_swiglu", "gated_backward_reference", "gated_forward_reference"]


# ---------------------------------------------------------------- pure-PyTorch reference


def _wide(block: Tensor, buffer: Tensor) -> Tensor:
    """``block`` in the compute dtype: itself when it has it, else copied into ``buffer``."""
    return block if block.dtype == buffer.dtype else buffer.copy_(block)


def _rounded(wide: Tensor, dtype: torch.dtype) -> Tensor:
    """``wide`` rounded to ``dtype`` and back, in place (nothing to do when dtype is the compute dtype)."""
    return wide if wide.dtype == dtype else wide.copy_(wide.to(dtype))


def gated_forward_reference(gate: Tensor, up: Tensor, target: str) -> Tensor:
    """rnd(rnd(h(gate)) * up), rnd the rounding to the storage dtype, block by block; contiguous (inputs made
    contiguous first, so that torch's activation loop, whose last bit depends on the layout, sees the same layout
    every time)."""
    gate, up = contiguous(gate, up)
    size = block_size(gate.numel())
    g, h, u = (gate.new_empty(size, dtype=compute_dtype(gate.dtype)) for _ in range(3))
    out = torch.empty_like(gate)
    gf, uf, of = gate.view(-1), up.view(-1), out.view(-1)
    for s, e in blocks(gate.numel()):
        m = e - s
        gc = _wide(gf[s:e], g[:m])
        activation(gc, target, all_finite(gc), h[:m])
        hu = torch.mul(_rounded(h[:m], gate.dtype), _wide(uf[s:e], u[:m]), out=h[:m])
        of[s:e].copy_(hu)
    return out


def gated_backward_reference(dy: Tensor, gate: Tensor, up: Tensor, table: Table, target: str) -> tuple[Tensor, Tensor]:
    """(d_gate, d_up) = (rnd(rnd(dy * up) * step(gate)), rnd(dy * rnd(h(gate)))), block by block; contiguous.
    d_gate is NaN where gate is not finite, as torch's (h'(+-inf) and h'(NaN) are NaN there)."""
    return _backward(dy, gate, up, table, target, native_codes=False)


def _backward(dy: Tensor, gate: Tensor, up: Tensor, table: Table, target: str,
              native_codes: bool) -> tuple[Tensor, Tensor]:
    """The reference backward; with ``native_codes`` the codes and the step run in the fused C loops (the same
    numbers)."""
    dy, gate, up = contiguous(dy, gate, up)
    thresholds = rounded_thresholds(table.thresholds, gate.dtype)
    levels = level_tensor(table.levels, gate.dtype, gate.device)
    size = block_size(gate.numel())
    g, h, d, u = (gate.new_empty(size, dtype=compute_dtype(gate.dtype)) for _ in range(4))
    codes = gate.new_empty(size, dtype=torch.uint8)
    index = gate.new_empty(size, dtype=torch.int32)
    scratch = gate.new_empty(size, dtype=torch.bool)
    d_gate, d_up = torch.empty_like(gate), torch.empty_like(gate)
    pack_bits = PACK_BITS[table.bits]
    packed = gate.new_empty(-(-size * pack_bits // 8) if native_codes else 0, dtype=torch.uint8)
    gf, uf, dyf, dgf, duf = gate.view(-1), up.view(-1), dy.view(-1), d_gate.view(-1), d_up.view(-1)
    for s, e in blocks(gate.numel()):
        m = e - s
        gc, dc = _wide(gf[s:e], g[:m]), _wide(dyf[s:e], d[:m])
        finite = all_finite(gc)
        activation(gc, target, finite, h[:m])
        duf[s:e].copy_(_rounded(h[:m], gate.dtype).mul_(dc))
        da = _rounded(torch.mul(dc, _wide(uf[s:e], u[:m]), out=h[:m]), gate.dtype)
        if native_codes:  # the fused C loops: the same codes, the same multiply and rounding
            native.approx_codes(gf[s:e], thresholds, pack_bits, packed[: -(-m * pack_bits // 8)])
            native.approx_step(dgf[s:e].copy_(da), packed, levels.tolist(), pack_bits, dgf[s:e])
            if not finite:
                dgf[s:e].masked_fill_(~gc.isfinite(), math.nan)
            continue
        codes_into(gc, thresholds, codes[:m], scratch[:m])
        level = torch.index_select(levels, 0, index[:m].copy_(codes[:m]), out=u[:m])
        if not finite:
            level.masked_fill_(~gc.isfinite(), math.nan)
        dgf[s:e].copy_(da.mul_(level))
    return d_gate, d_up


# ---------------------------------------------------------------- custom ops and their autograd


@torch.library.custom_op("approxbp::gated_fwd", mutates_args=())
def _gated_fwd(gate: Tensor, up: Tensor, table: Tensor, target: str) -> Tensor:
    """``table`` is not read here: it is an input so that autograd can save it for the backward."""
    gate, up = contiguous(gate, up)
    if runs_kernels(gate, "gated activation"):
        out = torch.empty_like(gate)
        kernel("gated", "gated_forward")(gate, up, target, out)
        return out
    return gated_forward_reference(gate, up, target)


@_gated_fwd.register_fake
def _(gate, up, table, target):
    return gate.new_empty(gate.shape)


@torch.library.custom_op("approxbp::gated_bwd", mutates_args=())
def _gated_bwd(dy: Tensor, gate: Tensor, up: Tensor, table: Tensor, target: str) -> tuple[Tensor, Tensor]:
    dy, gate, up = contiguous(dy, gate, up)
    if runs_kernels(gate, "gated activation"):
        d_gate, d_up = torch.empty_like(gate), torch.empty_like(gate)
        kernel("gated", "gated_backward")(dy, gate, up, table, target, d_gate, d_up)
        return d_gate, d_up
    return _backward(dy, gate, up, table_from_tensor(table), target, native_codes=runs_native(gate, dy, up))


@_gated_bwd.register_fake
def _(dy, gate, up, table, target):
    return gate.new_empty(gate.shape), gate.new_empty(gate.shape)


def _gated_setup(ctx, inputs, output):
    gate, up, table, target = inputs
    ctx.save_for_backward(gate, up, table)
    ctx.target = target


def _gated_backward(ctx, dy):
    gate, up, table = ctx.saved_tensors
    d_gate, d_up = _gated_bwd(dy, gate, up, table, ctx.target)
    return d_gate, d_up, None, None


_gated_fwd.register_autograd(_gated_backward, setup_context=_gated_setup)


@_gated_fwd.register_vmap
def _(info, in_dims, gate, up, table, target):
    """Elementwise: gate and up with the batch first (an unbatched one expanded), the whole batch in one call."""
    if in_dims[2] is not None:
        raise ValueError("the gated activation under torch.func.vmap: the table cannot be batched")
    gate, up = (t.movedim(d, 0) if d is not None else t.expand(info.batch_size, *t.shape)
                for t, d in zip((gate, up), in_dims[:2], strict=True))
    return _gated_fwd(gate, up, table, target), 0


# ---------------------------------------------------------------- public functional API


def _gated(gate: Tensor, up: Tensor, target: str, table: Table | FitResult | tuple | list | None) -> Tensor:
    resolved = resolve_table(table, target, 2, "primitive")
    check_float_tensor("gate", gate)
    check_float_tensor("up", up)
    if gate.device != up.device:
        raise ValueError(f"gate is on {gate.device} but up is on {up.device}")
    if gate.dtype != up.dtype:
        raise TypeError(f"gate and up must have the same dtype, got {gate.dtype} and {up.dtype}")
    if gate.shape != up.shape:
        raise ValueError(f"gate and up must have the same shape, got {tuple(gate.shape)} and {tuple(up.shape)}")
    if needs_composite(gate, up):  # forward AD or torch.func: tangent up step(gate) t_gate + h(gate) t_up (ops.tangent)
        g, u = gate.detach(), up.detach()
        dtype = compute_dtype(gate.dtype)
        jt = u.to(dtype) * step(g, resolved) * delta(gate, dtype)
        jt = jt + activation_reference(g, target).to(dtype) * delta(up, dtype)
        return with_tangent(_gated_fwd(g, u, table_on(resolved, gate.device), target), jt)
    return _gated_fwd(gate, up, table_on(resolved, gate.device), target)


def approx_swiglu(gate: Tensor, up: Tensor, table: Table | FitResult | tuple | list | None = None) -> Tensor:
    """silu(gate) * up (same shape and dtype); backward d_gate = dy * up * step(gate), step from ``table`` (default:
    ReSiLU2's 2-bit primitive table; any Table, SiLU FitResult or (thresholds, levels) pair).  Saves gate and up."""
    return _gated(gate, up, "silu", table)


def approx_geglu(gate: Tensor, up: Tensor, table: Table | FitResult | tuple | list | None = None,
                 approximate: str = "none") -> Tensor:
    """gelu(gate) * up, ``approximate`` "none" (erf form) or "tanh" as in F.gelu; backward d_gate = dy * up *
    step(gate), step from ``table`` (default: the 2-bit primitive table of that GELU form).  Saves gate and up."""
    if approximate not in GELU_FORMS:
        raise ValueError(f"approximate must be one of {tuple(GELU_FORMS)}, got {approximate!r}")
    return _gated(gate, up, GELU_FORMS[approximate], table)
