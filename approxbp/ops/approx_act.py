"""Approx-BP activations: the forward returns the exact activation h(x), the backward returns dy * h~'(x), where h~' is
the step function of a table (thresholds t, levels L): h~'(x) = L[code(x)], code(x) = #{j : t_j <= x}.

Autograd saves only the codes, packed densely: PACK_BITS[bits] bits per element (bits 1, 2, 4 as they are, 3 as 4),
so ceil(numel * pack_bits / 8) bytes, plus the table itself (8 * (2^(bits+1) - 1) bytes of fp64, one storage shared
by every call with the same table on the same device).  The baseline F.gelu / F.silu saves x: 2 bytes per element in
fp16/bf16, 4 in fp32; QuickGELU written as x * sigmoid(1.702 x) (HF, CLIP) saves x and the sigmoid, twice that.

h is computed in fp32 (fp64 for fp64 inputs) and rounded once to the input dtype; the CPU reference uses torch's own
activations in that wide dtype, so in fp32/fp64 it returns what F.gelu / F.silu return, and in fp16/bf16 it is within
one ulp of them (torch's low-precision CPU loops depend on the CPU and need not round once from fp32; GELU(+inf) =
+inf, see ``activation_reference``).  Codes
compare in fp32 against the fp32-rounded thresholds (fp64 for fp64 inputs) and dx = dy * L[code] is one fp32 multiply,
rounded: the Triton kernels and the reference give identical codes and gradients (see ``approxbp.ops.step``, the
shared reference of the step function).

Non-finite inputs.  torch's GELU/SiLU gradients are NaN at x = +-inf and NaN, and mixed-precision loss scaling relies
on seeing them.  A 2^bits-level code has no room for a fifth state "x not finite" (every code of 1, 2 and 4 bits is a
level), so the op marks the whole call instead: when any x is not finite, autograd saves the table's NaN twin (the
same thresholds, every level NaN) in place of the table, and the whole dx of that call is NaN (NaN at every element
where torch has NaN, and at the others too).  Both twins are built once per table tensor and shared by every call,
so no call saves more bytes (a graph holding calls of both kinds keeps both table storages, 8 * (2^(bits+1) - 1)
bytes each); the check is one pass over x (on CUDA one host sync per forward).

Forward-mode AD (jvp, jacfwd, forward_ad) gives the tangent h~'(x) t, the linear map whose transpose the backward
applies, so jacfwd equals jacrev (``approxbp.ops.tangent``).

Forward and backward are ``torch.library`` custom ops (``approxbp::approx_act_fwd`` / ``_bwd``), so
``torch.compile(fullgraph=True)`` traces them.  They run the Triton kernels (``approxbp.kernels.approx_act``) for
CUDA tensors and the pure-PyTorch reference below otherwise (see ``approxbp.ops.backend``).
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from approxbp.fit.result import FitResult, check_bits
from approxbp.ops import native
from approxbp.ops.backend import (
    TRITON_DTYPES,
    block_size,
    blocks,
    check_float_tensor,
    contiguous,
    kernel,
    runs_kernels,
    runs_native,
)
from approxbp.ops.step import (
    all_finite,
    codes_into,
    compute_dtype,
    level_tensor,
    pack_into,
    rounded_thresholds,
    step,
    table_tensor,
    unpack_into,
)
from approxbp.ops.tangent import delta, func_transforms_active, needs_composite, with_tangent
from approxbp.tables import SHIPPED_OBJECTIVES, Table, as_table
from approxbp.targets import QUICK_GELU_ALPHA, check_target

__all__ = [
    "PACK_BITS",
    "TRITON_DTYPES",
    "activation",
    "activation_reference",
    "approx_act",
    "approx_act_backward_reference",
    "approx_act_forward_reference",
    "pack_codes",
    "packed_bytes",
    "regelu2",
    "resilu2",
    "resolve_table",
    "table_from_tensor",
    "table_on",
    "unpack_codes",
]

PACK_BITS = {1: 1, 2: 2, 3: 4, 4: 4}  # bits of a code -> bits it occupies in the packed buffer


def packed_bytes(numel: int, pack_bits: int) -> int:
    return (numel * pack_bits + 7) // 8


# ---------------------------------------------------------------- tables and validation

_TABLE_CACHE: dict[tuple[Table, torch.device], Tensor] = {}
_TABLE_CACHE_SIZE = 1024
_FAKE_TABLE_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # FakeTensorMode -> its own cache


def table_on(table: Table, device: torch.device) -> Tensor:
    """[t.., L..] of ``table`` as fp64 on ``device``: built once per table and device in eager mode (the kernels round
    it to fp32 on load, the reference reads the exact values), a graph constant under torch.compile.  Under a
    FakeTensorMode (memory profiling) the table is fake and cached for that mode only, so fake runs share one table
    storage across layers as real runs do, and later real runs never see a fake one."""
    if torch.compiler.is_compiling():
        return table_tensor(table, device, torch.float64)
    mode = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE)
    cache = _TABLE_CACHE if mode is None else _FAKE_TABLE_CACHES.setdefault(mode, {})
    key = (table, device)
    cached = cache.get(key)
    if cached is None:
        if len(cache) >= _TABLE_CACHE_SIZE:
            cache.clear()
        cached = cache[key] = table_tensor(table, device, torch.float64)
    return cached


def resolve_table(table: Table | FitResult | tuple | list | None, target: str, bits: int,
                  objective: str) -> Table:
    """Validate target/bits/objective and turn ``table=`` into a Table (None: the shipped default)."""
    check_target(target)
    check_bits(bits)
    if table is None and objective not in SHIPPED_OBJECTIVES:
        raise ValueError(f"no shipped tables for objective {objective!r}; shipped: {', '.join(SHIPPED_OBJECTIVES)}")
    if isinstance(table, FitResult) and table.target != target:
        raise ValueError(f"the table was fitted to {table.target!r} but the activation is {target!r}")
    return as_table(table, target, bits, objective)


def table_from_tensor(table: Tensor) -> Table:
    """The Table of a ``table_on`` tensor (exact: fp64)."""
    values = table.tolist()
    n = len(values) // 2
    return Table(values[:n], values[n:])


# ---------------------------------------------------------------- pure-PyTorch reference


def activation(xc: Tensor, target: str, finite: bool, out: Tensor | None = None) -> Tensor:
    """h(xc) by torch's own ops, into ``out`` (same dtype as xc, not aliased) or, without it, as a new tensor that
    autograd and forward AD differentiate; ``finite``: whether every xc is.  GELU(+inf) is +inf, as in the kernels
    and in torch's fp64 and strided loops (torch's vectorised fp32 GELU returns NaN there)."""
    if target in ("gelu", "gelu_tanh"):
        form = "tanh" if target == "gelu_tanh" else "none"
        y = F.gelu(xc, approximate=form) if out is None else torch.ops.aten.gelu.out(xc, approximate=form, out=out)
        if not finite and target == "gelu":
            y = torch.where(xc == math.inf, xc, y) if out is None else y.masked_fill_(xc == math.inf, math.inf)
        return y
    if target == "silu":
        return F.silu(xc) if out is None else torch.ops.aten.silu.out(xc, out=out)
    if out is None:  # quick_gelu: x * sigmoid(alpha x), as HF and CLIP write it
        return xc * torch.sigmoid(QUICK_GELU_ALPHA * xc)
    return torch.sigmoid(torch.mul(xc, QUICK_GELU_ALPHA, out=out), out=out).mul_(xc)


def activation_reference(x: Tensor, target: str) -> Tensor:
    """h(x) computed in fp32 (fp64 for fp64 inputs) by torch, rounded once to x's dtype (differentiable)."""
    xc = x.to(compute_dtype(x.dtype))
    # under torch.func.vmap no .item(): treat the input as possibly non-finite (the same values, one more where)
    finite = not func_transforms_active() and all_finite(xc.detach())
    return activation(xc, target, finite).to(x.dtype)


def pack_codes(codes: Tensor, pack_bits: int) -> Tensor:
    """uint8 codes (any shape, read in row-major order) -> packed bytes, little end first, padding codes 0."""
    flat = codes.reshape(-1)
    padded = flat.new_zeros(packed_bytes(flat.numel(), pack_bits) * (8 // pack_bits))
    padded[: flat.numel()] = flat
    out = torch.empty(padded.numel() * pack_bits // 8, dtype=torch.uint8, device=codes.device)
    pack_into(padded, pack_bits, out)
    return out


def unpack_codes(packed: Tensor, numel: int, pack_bits: int) -> Tensor:
    """The first ``numel`` codes (uint8, 1-D) of a packed buffer."""
    out = torch.empty(packed.numel() * 8 // pack_bits, dtype=torch.uint8, device=packed.device)
    unpack_into(packed, pack_bits, out)
    return out[:numel]


def _codes_into(x: Tensor, thresholds: list[float], pack_bits: int, packed: Tensor) -> bool:
    """packed = the packed codes of x (contiguous), block by block; whether every x is finite."""
    per = 8 // pack_bits
    n = x.numel()
    size = block_size(n)
    codes = x.new_empty(-(-size // per) * per, dtype=torch.uint8)
    scratch = x.new_empty(size, dtype=torch.bool)
    wide = x.new_empty(size if compute_dtype(x.dtype) != x.dtype else 0, dtype=compute_dtype(x.dtype))
    xf = x.view(-1)
    finite = True
    for s, e in blocks(n):
        m = e - s
        xc = xf[s:e] if not wide.numel() else wide[:m].copy_(xf[s:e])
        finite = all_finite(xc) and finite
        codes_into(xc, thresholds, codes[:m], scratch[:m])
        padded = -(-m // per) * per
        if padded > m:  # the last block: padding codes are 0
            codes[m:padded] = 0
        pack_into(codes[:padded], pack_bits, packed[s // per: s // per + padded // per])
    return finite


def _activation_into(x: Tensor, target: str, finite: bool, y: Tensor) -> None:
    """y = h(x) (x, y contiguous) computed in the compute dtype and rounded once, block by block."""
    dtype = compute_dtype(x.dtype)
    if dtype == x.dtype:
        activation(x, target, finite, y)
        return
    size = block_size(x.numel())
    wide, hx = x.new_empty(size, dtype=dtype), x.new_empty(size, dtype=dtype)
    xf, yf = x.view(-1), y.view(-1)
    for s, e in blocks(x.numel()):
        m = e - s
        activation(wide[:m].copy_(xf[s:e]), target, finite, hx[:m])
        yf[s:e].copy_(hx[:m])  # the one rounding to x's dtype


def _forward_into(x: Tensor, table: Table, target: str, pack_bits: int, y: Tensor, packed: Tensor) -> bool:
    """y = h(x) and packed = the packed codes (x, y contiguous): the fused C loops count the codes where they run
    (``approxbp.ops.native``, the same codes), else torch; whether every x is finite."""
    thresholds = rounded_thresholds(table.thresholds, x.dtype)
    if runs_native(x):
        finite = native.approx_codes(x, thresholds, pack_bits, packed)
    else:
        finite = _codes_into(x, thresholds, pack_bits, packed)
    _activation_into(x, target, finite, y)
    return finite


def approx_act_forward_reference(x: Tensor, table: Table, target: str, pack_bits: int) -> tuple[Tensor, Tensor]:
    """(h(x) contiguous in x's shape and dtype, packed codes).  x is made contiguous first: torch's vectorised and
    strided activation loops can differ in the last bit, and the result should not depend on the layout."""
    (x,) = contiguous(x)
    y = torch.empty_like(x)
    packed = torch.empty(packed_bytes(x.numel(), pack_bits), dtype=torch.uint8, device=x.device)
    finite = _codes_into(x, rounded_thresholds(table.thresholds, x.dtype), pack_bits, packed)
    _activation_into(x, target, finite, y)
    return y, packed


def approx_act_backward_reference(dy: Tensor, packed: Tensor, table: Tensor, pack_bits: int) -> Tensor:
    """dy * L[code], multiplied in fp32 (fp64 for fp64) and rounded to dy's dtype, block by block; ``table`` is the
    saved [t.., L..] tensor (its levels are NaN after a non-finite input, see the module docstring)."""
    (dy,) = contiguous(dy)
    dtype = compute_dtype(dy.dtype)
    levels = level_tensor(table[table.numel() // 2:], dy.dtype, dy.device)
    per = 8 // pack_bits
    n = dy.numel()
    size = block_size(n)
    dx = torch.empty_like(dy)
    codes = dy.new_empty(-(-size // per) * per, dtype=torch.uint8)
    index = dy.new_empty(size, dtype=torch.int32)
    level = dy.new_empty(size, dtype=dtype)
    wide = dy.new_empty(size if dtype != dy.dtype else 0, dtype=dtype)
    dyf, dxf = dy.view(-1), dx.view(-1)
    for s, e in blocks(n):
        m = e - s
        first, last = s // per, -(-e // per)
        unpack_into(packed[first:last], pack_bits, codes[: (last - first) * per])
        index[:m].copy_(codes[:m])
        torch.index_select(levels, 0, index[:m], out=level[:m])
        if dtype == dy.dtype:
            torch.mul(dyf[s:e], level[:m], out=dxf[s:e])
        else:
            torch.mul(wide[:m].copy_(dyf[s:e]), level[:m], out=level[:m])
            dxf[s:e].copy_(level[:m])
    return dx


# ---------------------------------------------------------------- custom ops and their autograd

_SAVED_TABLES = WeakIdKeyDictionary()  # table tensor -> (its copy, its NaN twin): what autograd saves


def saved_tables(table: Tensor) -> tuple[Tensor, Tensor]:
    """(copy of ``table``, the same with every level NaN), built once per table tensor (``table_on`` caches those,
    per FakeTensorMode too), so all calls with one table share the two storages.  A copy, not ``table`` itself,
    because a custom op may not return one of its inputs."""
    pair = _SAVED_TABLES.get(table)
    if pair is None:
        twin = table.clone()
        twin[table.numel() // 2:] = math.nan
        pair = _SAVED_TABLES[table] = (table.clone(), twin)
    return pair


@torch.library.custom_op("approxbp::approx_act_fwd", mutates_args=())
def _approx_act_fwd(x: Tensor, table: Tensor, target: str, pack_bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """(h(x), packed codes, the table to save: its NaN twin when some x is not finite)."""
    (x,) = contiguous(x)
    y = torch.empty_like(x)
    codes = torch.empty(packed_bytes(x.numel(), pack_bits), dtype=torch.uint8, device=x.device)
    if runs_kernels(x, "Approx-BP activation"):
        kernel("approx_act", "approx_act_forward")(x, table, target, pack_bits, y, codes)
        finite = all_finite(x)
    else:
        finite = _forward_into(x, table_from_tensor(table), target, pack_bits, y, codes)
    saved, twin = saved_tables(table)
    return y, codes, saved if finite else twin


@_approx_act_fwd.register_fake
def _(x, table, target, pack_bits):
    return (x.new_empty(x.shape), x.new_empty(packed_bytes(x.numel(), pack_bits), dtype=torch.uint8),
            saved_tables(table)[0])


@torch.library.custom_op("approxbp::approx_act_bwd", mutates_args=())
def _approx_act_bwd(dy: Tensor, codes: Tensor, table: Tensor, pack_bits: int) -> Tensor:
    (dy,) = contiguous(dy)
    if runs_kernels(dy, "Approx-BP activation"):
        dx = torch.empty_like(dy)
        kernel("approx_act", "approx_act_backward")(dy, codes, table, pack_bits, dx)
        return dx
    if runs_native(dy):  # the fused C loop: the reference's multiply and rounding
        dx = torch.empty_like(dy)
        native.approx_step(dy, codes, table[table.numel() // 2:].tolist(), pack_bits, dx)
        return dx
    return approx_act_backward_reference(dy, codes, table, pack_bits)


@_approx_act_bwd.register_fake
def _(dy, codes, table, pack_bits):
    return dy.new_empty(dy.shape)


def _approx_act_setup(ctx, inputs, output):
    _, _, _, pack_bits = inputs
    _, codes, saved = output
    ctx.mark_non_differentiable(codes, saved)
    ctx.save_for_backward(codes, saved)
    ctx.pack_bits = pack_bits


def _approx_act_backward(ctx, dy, *_):
    codes, table = ctx.saved_tensors
    return _approx_act_bwd(dy, codes, table, ctx.pack_bits), None, None, None


_approx_act_fwd.register_autograd(_approx_act_backward, setup_context=_approx_act_setup)


@_approx_act_fwd.register_vmap
def _(info, in_dims, x, table, target, pack_bits):
    """Elementwise: the whole batch in one call (the codes and table are not per sample)."""
    if in_dims[1] is not None:
        raise ValueError("approx_act under torch.func.vmap: the table cannot be batched")
    return _approx_act_fwd(x, table, target, pack_bits), (in_dims[0], None, None)


# ---------------------------------------------------------------- public functional API


def approx_act(x: Tensor, target: str = "gelu", bits: int = 2, objective: str = "primitive",
               table: Table | FitResult | tuple | list | None = None) -> Tensor:
    """h(x) for ``target`` in gelu (erf form), gelu_tanh, silu, quick_gelu; backward dy * step(x).

    ``table``: None for the shipped table of (target, bits, objective), or a Table, a FitResult (of this target)
    or a (thresholds, levels) pair, whose own bits then replace ``bits``.  Saves ceil(numel * PACK_BITS[bits] / 8)
    bytes of packed codes (plus the shared table)."""
    resolved = resolve_table(table, target, bits, objective)
    check_float_tensor("x", x)
    if needs_composite(x):  # forward AD or torch.func: tangent step(x) t (approxbp.ops.tangent)
        y, *_ = _approx_act_fwd(x.detach(), table_on(resolved, x.device), target, PACK_BITS[resolved.bits])
        slope = step(x.detach(), resolved)
        return with_tangent(y, slope * delta(x, slope.dtype))
    y, *_ = _approx_act_fwd(x, table_on(resolved, x.device), target, PACK_BITS[resolved.bits])
    return y


def regelu2(x: Tensor, table: Table | FitResult | tuple | list | None = None) -> Tensor:
    """ReGELU2: exact GELU (erf form) forward, 2-bit step backward (the paper's primitive-objective table)."""
    return approx_act(x, "gelu", 2, "primitive", table)


def resilu2(x: Tensor, table: Table | FitResult | tuple | list | None = None) -> Tensor:
    """ReSiLU2: exact SiLU forward, 2-bit step backward (the paper's primitive-objective table)."""
    return approx_act(x, "silu", 2, "primitive", table)
