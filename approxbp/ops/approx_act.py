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
from approxbp.ops.backend import check_float_tensor, get_backend, wants_triton
from approxbp.ops.step import compute_dtype, step, step_codes, table_tensor
from approxbp.ops.tangent import delta, has_tangent, with_tangent
from approxbp.tables import SHIPPED_OBJECTIVES, Table, as_table
from approxbp.targets import check_target

__all__ = [
    "PACK_BITS",
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
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QUICK_GELU_ALPHA = 1.702


def packed_bytes(numel: int, pack_bits: int) -> int:
    return (numel * pack_bits + 7) // 8


def use_triton(x: Tensor, what: str) -> bool:
    """Whether ``x`` goes to the Triton kernels; a clear error when they are forced on a dtype they do not take."""
    if not wants_triton(x):
        return False
    supported = x.dtype in TRITON_DTYPES
    if get_backend() == "triton" and not supported:
        raise ValueError(f"the Triton {what} takes {TRITON_DTYPES}, got {x.dtype}")
    return supported


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


def activation_reference(x: Tensor, target: str) -> Tensor:
    """h(x) computed in fp32 (fp64 for fp64 inputs) by torch, rounded to x's dtype.  GELU(+inf) is +inf, as in the
    kernels and in torch's fp64 and strided loops (torch's vectorised fp32 GELU returns NaN there)."""
    xf = x.to(compute_dtype(x.dtype))
    if target == "gelu":
        y = torch.where(xf == math.inf, xf, F.gelu(xf))
    elif target == "gelu_tanh":
        y = F.gelu(xf, approximate="tanh")
    elif target == "silu":
        y = F.silu(xf)
    else:
        y = xf * torch.sigmoid(QUICK_GELU_ALPHA * xf)
    return y.to(x.dtype)


def pack_codes(codes: Tensor, pack_bits: int) -> Tensor:
    """uint8 codes (any shape, read in row-major order) -> packed bytes, little end first, padding codes 0."""
    per = 8 // pack_bits
    flat = codes.reshape(-1)
    padded = flat.new_zeros(packed_bytes(flat.numel(), pack_bits) * per)
    padded[: flat.numel()] = flat
    shifts = torch.arange(0, 8, pack_bits, dtype=torch.int32, device=codes.device)
    return (padded.view(-1, per).to(torch.int32) << shifts).sum(1).to(torch.uint8)


def unpack_codes(packed: Tensor, numel: int, pack_bits: int) -> Tensor:
    """The first ``numel`` codes (uint8, 1-D) of a packed buffer."""
    shifts = torch.arange(0, 8, pack_bits, dtype=torch.int32, device=packed.device)
    codes = (packed.to(torch.int32)[:, None] >> shifts) & ((1 << pack_bits) - 1)
    return codes.reshape(-1)[:numel].to(torch.uint8)


def approx_act_forward_reference(x: Tensor, table: Table, target: str, pack_bits: int) -> tuple[Tensor, Tensor]:
    """(h(x) contiguous in x's shape and dtype, packed codes).  x is made contiguous first: torch's vectorised and
    strided activation loops can differ in the last bit, and the result should not depend on the layout."""
    x = x.contiguous()
    return activation_reference(x, target), pack_codes(step_codes(x, table), pack_bits)


def approx_act_backward_reference(dy: Tensor, packed: Tensor, table: Tensor, pack_bits: int) -> Tensor:
    """dy * L[code], multiplied in fp32 (fp64 for fp64) and rounded to dy's dtype; ``table`` is the saved [t.., L..]
    tensor (its levels are NaN after a non-finite input, see the module docstring)."""
    levels = table[table.numel() // 2:].to(compute_dtype(dy.dtype))
    level = levels[unpack_codes(packed, dy.numel(), pack_bits).long()].view(dy.shape)
    return (dy.to(level.dtype) * level).to(dy.dtype)


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
    finite, twin = saved_tables(table)
    saved = finite if bool(x.isfinite().all()) else twin
    if use_triton(x, "Approx-BP activation"):
        from approxbp.kernels.approx_act import approx_act_forward  # lazily: TRITON_INTERPRET is read at definition

        x = x.contiguous()
        y = x.new_empty(x.shape)
        codes = torch.empty(packed_bytes(x.numel(), pack_bits), dtype=torch.uint8, device=x.device)
        approx_act_forward(x, table, target, pack_bits, y, codes)
        return y, codes, saved
    return *approx_act_forward_reference(x, table_from_tensor(table), target, pack_bits), saved


@_approx_act_fwd.register_fake
def _(x, table, target, pack_bits):
    return (x.new_empty(x.shape), x.new_empty(packed_bytes(x.numel(), pack_bits), dtype=torch.uint8),
            saved_tables(table)[0])


@torch.library.custom_op("approxbp::approx_act_bwd", mutates_args=())
def _approx_act_bwd(dy: Tensor, codes: Tensor, table: Tensor, pack_bits: int) -> Tensor:
    if use_triton(dy, "Approx-BP activation"):
        from approxbp.kernels.approx_act import approx_act_backward

        dy = dy.contiguous()
        dx = dy.new_empty(dy.shape)
        approx_act_backward(dy, codes, table, pack_bits, dx)
        return dx
    return approx_act_backward_reference(dy.contiguous(), codes, table, pack_bits)


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


# ---------------------------------------------------------------- public functional API


def approx_act(x: Tensor, target: str = "gelu", bits: int = 2, objective: str = "primitive",
               table: Table | FitResult | tuple | list | None = None) -> Tensor:
    """h(x) for ``target`` in gelu (erf form), gelu_tanh, silu, quick_gelu; backward dy * step(x).

    ``table``: None for the shipped table of (target, bits, objective), or a Table, a FitResult (of this target)
    or a (thresholds, levels) pair, whose own bits then replace ``bits``.  Saves ceil(numel * PACK_BITS[bits] / 8)
    bytes of packed codes (plus the shared table)."""
    resolved = resolve_table(table, target, bits, objective)
    check_float_tensor("x", x)
    if has_tangent(x):  # forward-mode AD: tangent step(x) t (approxbp.ops.tangent)
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
