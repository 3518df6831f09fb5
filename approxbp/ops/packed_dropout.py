"""Dropout whose backward keeps its mask as packed bits: 1 bit per element (uint8, 8 elements a byte, little end
first), where torch's dropout keeps a bool mask (CUDA, 1 byte per element) or the scaled noise (CPU, in x's dtype).

The mask is torch's own, drawn by the same call: ``keep_mask(x, p)`` is ``F.dropout`` applied to a ones tensor of x's
shape, strides, dtype and device, so it consumes the RNG exactly as ``nn.Dropout(p)(x)`` would (CPU:
``empty_like(x).bernoulli_(1 - p)``; CUDA: ``native_dropout``, whose Philox offsets depend on numel and dtype).
``apply_keep`` then computes what torch computes with that mask, to the bit:

    CPU   x * noise,  noise = keep ? 1 / (1 - p) rounded to x's dtype : 0   (bernoulli_ then div_, in x's dtype)
    CUDA  x * keep * (1 / (1 - p)) in fp32 (fp64 for fp64), rounded once    (the fused kernel)

and the backward is ``apply_keep(dy, keep)``: torch's own gradient on both devices.  p = 0, eval mode and empty
inputs return x (no RNG drawn), p = 1 returns x * 0, as torch does.

On contiguous CPU tensors the fused C loops (``approxbp.ops.native``) do the same in one pass each: torch's own
noise (``empty_like(x).bernoulli_(1 - p).div_(1 - p)``, the same draws), then y = x * noise with the bits packed
alongside, and dx = dy * (bit ? noise value : 0), the same products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from approxbp.ops import native
from approxbp.ops.backend import runs_native
from approxbp.ops.tangent import func_transforms_active

_SHIFTS = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_bits(mask: Tensor) -> Tensor:
    """A bool tensor (read in row-major order) -> uint8 bytes, element i at bit i % 8 of byte i // 8, padding 0."""
    flat = mask.reshape(-1)
    padded = flat.new_zeros((flat.numel() + 7) // 8 * 8, dtype=torch.uint8)
    padded[: flat.numel()] = flat
    weights = torch.tensor(_SHIFTS, dtype=torch.uint8, device=mask.device)
    return (padded.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: torch.Size) -> Tensor:
    """The bool tensor of ``shape`` that ``pack_bits`` packed."""
    numel = shape.numel()
    weights = torch.tensor(_SHIFTS, dtype=torch.uint8, device=packed.device)
    return (packed[:, None] & weights).ne(0).reshape(-1)[:numel].reshape(shape)


def keep_mask(x: Tensor, p: float) -> Tensor:
    """The keep mask nn.Dropout(p) would draw for ``x`` now (training, 0 < p < 1), drawn the same way."""
    return F.dropout(torch.ones_like(x), p, True) != 0


def apply_keep(x: Tensor, keep: Tensor, p: float) -> Tensor:
    """x with the mask ``keep`` applied as torch's dropout on x's device applies it (see the module docstring)."""
    if p == 1:
        return x * 0
    if x.device.type == "cuda":
        wide = torch.promote_types(x.dtype, torch.float32)
        return (x.to(wide) * (keep.to(wide) * (1.0 / (1.0 - p)))).to(x.dtype)
    noise = torch.ones((), dtype=x.dtype, device=x.device).div_(1.0 - p)
    return x * (keep.to(x.dtype) * noise)


def dropout_active(x: Tensor, p: float, training: bool) -> bool:
    """Whether torch's dropout draws a mask here (else it returns x, or x * 0 for p = 1)."""
    return training and 0 < p < 1 and x.numel() > 0


class PackedDropoutFunction(torch.autograd.Function):
    """y = dropout(x) with torch's mask; saves the mask as packed bits only."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float, inplace: bool) -> Tensor:
        if p < 1 and runs_native(x):
            noise = torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)  # torch's CPU dropout, draw for draw
            y = x if inplace else torch.empty_like(x)
            bits = torch.empty((x.numel() + 7) // 8, dtype=torch.uint8)
            native.dropout_forward(x, noise, y, bits)
            ctx.p, ctx.shape = p, x.shape
            ctx.save_for_backward(bits)
            if inplace:
                ctx.mark_dirty(x)
            return y
        keep = keep_mask(x, p)
        ctx.p, ctx.shape = p, keep.shape
        ctx.save_for_backward(pack_bits(keep))
        if inplace:
            ctx.mark_dirty(x)
            return x.copy_(apply_keep(x, keep, p))
        return apply_keep(x, keep, p)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None, None]:
        (packed,) = ctx.saved_tensors
        dy = dy.contiguous()
        if ctx.p < 1 and runs_native(dy):
            dx = torch.empty_like(dy)
            scale = torch.ones((), dtype=dy.dtype).div_(1 - ctx.p).item()  # the noise's kept value
            native.dropout_backward(dy, packed, scale, dx)
            return dx, None, None
        return apply_keep(dy, unpack_bits(packed, ctx.shape), ctx.p), None, None


def packed_dropout(x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """``F.dropout(x, p, training, inplace)``, the same values and RNG draws, with a 1-bit saved mask."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not dropout_active(x, p, training) or func_transforms_active():  # torch.func refuses the autograd Function
        return F.dropout(x, p, training, inplace)
    return PackedDropoutFunction.apply(x, p, inplace)
