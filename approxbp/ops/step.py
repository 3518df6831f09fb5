"""A backward table as torch tensors: the interval code of every element, its packed form, and the step function.

code(x) = #{j : t_j <= x} in 0 .. 2^bits - 1 (NaN -> 0, as every comparison with NaN is false), step(x) = L[code(x)].
Comparisons are made in fp32 against the fp32-rounded thresholds for fp16/bf16/fp32 inputs (exactly what the Triton
kernels do, so codes agree bit for bit) and in fp64 against the table's own values for fp64 inputs.

Packed codes: 8 / pack_bits codes per byte, little end first (element i in byte i // per at bit (i % per) * pack_bits),
padding codes 0.  The CPU reference works block by block (``approxbp.ops.backend.blocks``): codes are counted in a
uint8 buffer (one comparison per threshold, added in place) and packed straight into the output, so no int64 or
full-size intermediate exists.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from approxbp.ops.backend import block_size, blocks
from approxbp.ops.tangent import func_transforms_active
from approxbp.tables import Table


def table_tensor(table: Table, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """[t_1 .. t_{2^bits - 1}, L_0 .. L_{2^bits - 1}] as one tensor: the run-time table argument of the kernels."""
    return torch.tensor(table.thresholds + table.levels, dtype=dtype, device=device)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the ops compute in: fp64 for fp64 storage, fp32 for fp16, bf16 and fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rounded_thresholds(thresholds, dtype: torch.dtype) -> list[float]:
    """The thresholds rounded to the compute dtype of ``dtype``, as Python floats (which hold them exactly), so a
    comparison with them is the same in fp32 and in fp64."""
    return torch.tensor(list(thresholds), dtype=compute_dtype(dtype)).tolist()


def codes_into(xc: Tensor, thresholds: list[float], out: Tensor, scratch: Tensor) -> None:
    """out (uint8, xc's shape) = #{j : thresholds_j <= xc}; ``scratch`` a bool tensor of xc's shape."""
    torch.ge(xc, thresholds[0], out=out.view(torch.bool))
    for t in thresholds[1:]:
        out.add_(torch.ge(xc, t, out=scratch).view(torch.uint8))


def all_finite(t: Tensor) -> bool:
    """Whether every element of ``t`` is finite: one min/max pass (NaN propagates to both)."""
    if not t.numel():
        return True
    lo, hi = torch.aminmax(t)
    return math.isfinite(lo.item()) and math.isfinite(hi.item())


# Packing folds the codes of one little-endian word (8 / pack_bits bytes, one code each) into its low byte: each
# round ORs the word with itself shifted right so that neighbouring groups of codes become adjacent bits.
_WORDS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _fold_shifts(pack_bits: int) -> list[int]:
    """Right shifts of the packing rounds: 8 - b, 16 - 2b, 32 - 4b (as many as log2 of the codes per byte)."""
    per = 8 // pack_bits
    return [8 * span - pack_bits * span for span in (1, 2, 4) if span < per]


def pack_into(codes: Tensor, pack_bits: int, out: Tensor) -> None:
    """Pack uint8 ``codes`` (1-D, a multiple of 8 / pack_bits long) into ``out`` (uint8, numel * pack_bits / 8)."""
    word = codes.view(_WORDS[8 // pack_bits])
    for shift in _fold_shifts(pack_bits):
        word = word | (word >> shift)
    out.copy_(word.bitwise_and_(0xFF))


def unpack_into(packed: Tensor, pack_bits: int, out: Tensor) -> None:
    """The codes of ``packed`` (uint8, 1-D) into ``out`` (uint8, packed.numel() * 8 / pack_bits): the folds undone,
    each round masking the groups it separates."""
    word = out.view(_WORDS[8 // pack_bits])
    word.copy_(packed)
    bits = 8 * word.element_size()
    for span, shift in reversed(list(zip((1, 2, 4), _fold_shifts(pack_bits), strict=False))):
        group = (1 << pack_bits * span) - 1  # one group of codes, repeated every 8 * span bits of the word
        mask = sum(group << offset for offset in range(0, bits, 8 * span))
        word.bitwise_or_(word << shift).bitwise_and_(mask - (1 << bits) if mask >= 1 << (bits - 1) else mask)


def step_codes(x: Tensor, table: Table) -> Tensor:
    """code(x) as uint8, same shape as ``x``."""
    out = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    if not x.numel():
        return out
    t = rounded_thresholds(table.thresholds, x.dtype)
    flat, codes = x.reshape(-1), out.view(-1)
    scratch = torch.empty(block_size(flat.numel()), dtype=torch.bool, device=x.device)
    for s, e in blocks(flat.numel()):
        codes_into(flat[s:e].to(compute_dtype(x.dtype)), t, codes[s:e], scratch[: e - s])
    return out


def level_tensor(levels, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The levels in the compute dtype of ``dtype`` (fp64 for fp64, fp32 otherwise: the kernels multiply in fp32)."""
    return torch.as_tensor(levels, dtype=compute_dtype(dtype), device=device)


def step(x: Tensor, table: Table) -> Tensor:
    """h~'(x) = L[code(x)] in the compute dtype of ``x`` (fp32, or fp64 for fp64 inputs)."""
    levels = level_tensor(table.levels, x.dtype, x.device)
    if func_transforms_active():  # torch.func: out= ops have no batching rules; the same comparisons
        xc = x.to(compute_dtype(x.dtype))
        return levels[sum((xc >= t).int() for t in rounded_thresholds(table.thresholds, x.dtype))]
    return levels[step_codes(x, table).int()]
