"""Triton kernels of Approx-BP activations: the exact activation forward, a step-function backward from packed codes.

For y = h(x) the forward writes y and the interval index of every element,
    code(x) = #{j : t_j <= x}            (t the table's 2^bits - 1 increasing thresholds; NaN -> 0),
packed 8 / PACK_BITS codes per byte, little end first (element i sits in byte i // PER at bit (i % PER) * PACK_BITS);
PACK_BITS (1, 2 or 4) is the caller's choice.  The backward returns dx = dy * L[code(x)].
The table travels at run time as one tensor [t_1 .. t_{2^bits - 1}, L_0 .. L_{2^bits - 1}] (fp32 or fp64, rounded to
fp32 on load, so the kernel compares against exactly the fp32 thresholds of ``approxbp.ops.step``), so every layer can
carry its own calibrated table; only the number of thresholds is a compile-time constant.

Arithmetic is fp32 whatever the storage dtype (fp16, bf16, fp32).  Conversions from and to bf16 are done on the bits
(exact upcast; round-to-nearest-even downcast, as torch and the GPU's cvt.rn do), because Triton's interpreter, which
runs these kernels on CPU in the tests, truncates on downcast and mishandles bf16 subnormals on upcast.
Scalar constants multiply from the right (``x * C``): the interpreter cannot evaluate ``constexpr * tensor``.

Indexing: program ids are cast to int64 before they are multiplied, so element offsets pid * BLOCK * PER stay exact
past 2^31 elements (tensors of 2^31 elements or more exist: 4 GiB of bf16).  Without the cast the product is int32
and wraps; ``tests/ops/test_approx_act.py`` checks the offsets of a program id just below 2^31 / BLOCK.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from approxbp.targets import GELU_TANH_KAPPA as _KAPPA
from approxbp.targets import QUICK_GELU_ALPHA as _ALPHA

from .launch import on_device

SQRT1_2 = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2)
GELU_TANH_2BETA = tl.constexpr(1.5957691216057308)  # 2 * sqrt(2 / pi)
GELU_TANH_KAPPA = tl.constexpr(_KAPPA)
QUICK_GELU_ALPHA = tl.constexpr(_ALPHA)

# Elements per program; the number of bytes per program is this over the codes per byte.
ELEMENTS_PER_PROGRAM = 4096
NUM_WARPS = 8


@triton.jit
def flat_offsets(pid, BLOCK: tl.constexpr):
    """Element indices [BLOCK] of program ``pid`` (int64, see the module docstring)."""
    return pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def packed_offsets(pid, BLOCK: tl.constexpr, PER: tl.constexpr):
    """Byte indices [BLOCK] of program ``pid`` and its element indices [BLOCK * PER], element = byte * PER + slot:
    one contiguous run, so that loads and stores of elements vectorise (128-bit accesses on aligned pointers)."""
    return flat_offsets(pid, BLOCK), flat_offsets(pid, BLOCK * PER)


@triton.jit
def to_fp32(x):
    """Exact upcast to fp32 (bf16 by a 16-bit shift of its bits)."""
    if x.dtype == tl.bfloat16:
        return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return x.to(tl.float32)


@triton.jit
def from_fp32(y, dtype: tl.constexpr):
    """fp32 -> dtype, rounding to nearest even; bf16: (bits + 0x7FFF + lsb) >> 16, NaN -> the quiet NaN 0x7FC0."""
    if dtype == tl.bfloat16:
        bits = y.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(y != y, 0x7FC0, bits)
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return y.to(dtype)


@triton.jit
def activation(x, TARGET: tl.constexpr):
    """h(x) in fp32.
    gelu:       x/2 (1 + erf(x / sqrt 2))
    gelu_tanh:  x/2 (1 + tanh(u)) = x sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)  (no cancellation near 0)
    silu:       x sigmoid(x)
    quick_gelu: x sigmoid(1.702 x)"""
    if TARGET == "gelu":
        return 0.5 * x * (1.0 + tl.math.erf(x * SQRT1_2))
    elif TARGET == "gelu_tanh":
        return x * tl.sigmoid((x + x * x * x * GELU_TANH_KAPPA) * GELU_TANH_2BETA)
    elif TARGET == "silu":
        return x * tl.sigmoid(x)
    else:
        tl.static_assert(TARGET == "quick_gelu")
        return x * tl.sigmoid(x * QUICK_GELU_ALPHA)


@triton.jit
def step_code(x, table_ptr, N_THRESHOLDS: tl.constexpr):
    """code(x) = #{j : t_j <= x} (int32); every comparison with NaN is false, so code(NaN) = 0."""
    code = tl.zeros(x.shape, dtype=tl.int32)
    for j in tl.static_range(N_THRESHOLDS):
        code += (x >= tl.load(table_ptr + j).to(tl.float32)).to(tl.int32)
    return code


@triton.jit
def _approx_act_fwd_kernel(x_ptr, y_ptr, codes_ptr, table_ptr, n, n_bytes,
                           TARGET: tl.constexpr, N_THRESHOLDS: tl.constexpr, PACK_BITS: tl.constexpr,
                           BLOCK: tl.constexpr):
    """y = h(x);  byte b = sum_s code(x[b * PER + s]) << (s * PACK_BITS), PER = 8 / PACK_BITS (padding codes 0)."""
    PER: tl.constexpr = 8 // PACK_BITS
    byte, elem = packed_offsets(tl.program_id(0), BLOCK, PER)
    mask = elem < n
    x = tl.load(x_ptr + elem, mask=mask, other=0.0)
    xf = to_fp32(x)
    tl.store(y_ptr + elem, from_fp32(activation(xf, TARGET), x.dtype), mask=mask)
    code = tl.reshape(tl.where(mask, step_code(xf, table_ptr, N_THRESHOLDS), 0), [BLOCK, PER])
    shift = tl.arange(0, PER) * PACK_BITS
    packed = tl.sum(code << shift[None, :], axis=1)
    tl.store(codes_ptr + byte, packed.to(tl.uint8), mask=byte < n_bytes)


@triton.jit
def _approx_act_bwd_kernel(dy_ptr, codes_ptr, table_ptr, dx_ptr, n, n_bytes,
                           N_THRESHOLDS: tl.constexpr, PACK_BITS: tl.constexpr, BLOCK: tl.constexpr):
    """dx = dy * L[code], code = (byte >> (s * PACK_BITS)) & (2^PACK_BITS - 1); the codes are only read."""
    PER: tl.constexpr = 8 // PACK_BITS
    byte, elem = packed_offsets(tl.program_id(0), BLOCK, PER)
    mask = elem < n
    packed = tl.load(codes_ptr + byte, mask=byte < n_bytes, other=0).to(tl.int32)
    shift = tl.arange(0, PER) * PACK_BITS
    code = tl.reshape((packed[:, None] >> shift[None, :]) & ((1 << PACK_BITS) - 1), [BLOCK * PER])
    level = tl.load(table_ptr + N_THRESHOLDS + code).to(tl.float32)
    dy = tl.load(dy_ptr + elem, mask=mask, other=0.0)
    tl.store(dx_ptr + elem, from_fp32(to_fp32(dy) * level, dy.dtype), mask=mask)


def approx_act_forward(x: torch.Tensor, table: torch.Tensor, target: str, pack_bits: int, y: torch.Tensor,
                       codes: torch.Tensor) -> None:
    """Write h(x) into ``y`` and the packed codes into ``codes``; all contiguous, ``table`` 2 * levels - 1 long."""
    n = x.numel()
    if n:
        block = ELEMENTS_PER_PROGRAM * pack_bits // 8
        on_device(_approx_act_fwd_kernel, x)[(triton.cdiv(n, ELEMENTS_PER_PROGRAM),)](
            x, y, codes, table, n, codes.numel(), TARGET=target, N_THRESHOLDS=table.numel() // 2,
            PACK_BITS=pack_bits, BLOCK=block, num_warps=NUM_WARPS)


def approx_act_backward(dy: torch.Tensor, codes: torch.Tensor, table: torch.Tensor, pack_bits: int,
                        dx: torch.Tensor) -> None:
    """Write dy * L[code] into ``dx``; ``dy``, ``dx`` contiguous with as many elements as were coded."""
    n = dy.numel()
    if n:
        block = ELEMENTS_PER_PROGRAM * pack_bits // 8
        on_device(_approx_act_bwd_kernel, dy)[(triton.cdiv(n, ELEMENTS_PER_PROGRAM),)](
            dy, codes, table, dx, n, codes.numel(), N_THRESHOLDS=table.numel() // 2, PACK_BITS=pack_bits,
            BLOCK=block, num_warps=NUM_WARPS)
