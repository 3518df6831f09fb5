"""One LoRA adapter's contribution, saving for backward only its input, A's output and a 1-bit dropout mask.

    delta = s * B A drop(z),   z = x  (or z = gamma * y + beta, x = y, behind a folded norm),

computed in A's dtype (x cast to it first, as peft does).  peft's modules save drop(z) for A (a copy of the input, d
per token), a dropout mask (1 byte per element on CUDA, the scaled noise in x's dtype on CPU) and A's output h for B.
This op saves x itself (the tensor the base layer, the norm or the neighbouring adapters on the same input keep
anyway: one storage; only when A trains, LoRA-FA needs none), h (r per token, only when B trains) and the mask as
packed bits (``approxbp.ops.packed_dropout``, drawn exactly as
nn.Dropout draws it); the backward recomputes drop(z) from them.  Gradients, with g = s * dL/ddelta:

    dL/dB = g^T h,   dh = g B,   dL/dA = dh^T drop(z),   dL/dz = keep * scale * (dh A),   dL/dy = gamma * dL/dz.

Without dropout (eval mode, p = 0) behind a folded norm, h = (A diag(gamma)) y + A beta, as ``AffineInputLinear``
computes it, so dL/dA = (dh^T y) diag(gamma) + (sum dh) beta^T and dL/dy = dh A diag(gamma).  gamma/beta get no
gradient (they are copies of folded parameters, see ``approxbp.conversion.fold``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from approxbp.ops.packed_dropout import apply_keep, dropout_active, keep_mask, pack_bits, unpack_bits


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def _affine(y: Tensor, gamma: Tensor | None, beta: Tensor | None) -> Tensor:
    """gamma * y + beta in y's dtype, as ``AffineThenDropout`` computes it."""
    if gamma is None:
        return y
    gamma = gamma.to(y.dtype)
    return y * gamma if beta is None else torch.addcmul(beta.to(y.dtype), y, gamma)


class LoraDeltaFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, b: Tensor, scaling: float, p: float, gamma: Tensor | None,
                beta: Tensor | None) -> Tensor:
        xc = x.to(a.dtype)
        if p > 0:
            z = _affine(xc, gamma, beta)
            keep = keep_mask(z, p)
            h = F.linear(apply_keep(z, keep, p), a)
            ctx.shape = keep.shape
            packed = pack_bits(keep)
        else:
            weight = a if gamma is None else a * gamma.to(a.dtype)
            h = F.linear(xc, weight, None if beta is None else F.linear(beta.to(a.dtype), a))
            packed = None
        ctx.scaling, ctx.p, ctx.dtype = scaling, p, x.dtype
        need_a, need_b = ctx.needs_input_grad[1:3]  # x only for dA, h only for dB (LoRA-FA: no x)
        ctx.save_for_backward(x if need_a else None, h if need_b else None, packed, a, b, gamma, beta)
        return F.linear(h, b) * scaling

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, h, packed, a, b, gamma, beta = ctx.saved_tensors
        need_x, need_a, need_b = ctx.needs_input_grad[:3]
        g = grad * ctx.scaling
        db = _flat(g).t().mm(_flat(h)) if need_b else None
        if not (need_x or need_a):
            return None, None, db, None, None, None, None
        dh = g.matmul(b)
        da = dx = None
        if ctx.p > 0:
            keep = unpack_bits(packed, ctx.shape)
            if need_a:
                da = _flat(dh).t().mm(_flat(apply_keep(_affine(x.to(a.dtype), gamma, beta), keep, ctx.p)))
            if need_x:
                dz = apply_keep(dh.matmul(a), keep, ctx.p)
                dx = dz if gamma is None else dz * gamma.to(dz.dtype)
        else:
            weight = a if gamma is None else a * gamma.to(a.dtype)
            if need_a:
                da = _flat(dh).t().mm(_flat(x.to(a.dtype)))
                if gamma is not None:
                    da = da * gamma.to(a.dtype)
                if beta is not None:
                    da = da + torch.outer(_flat(dh).sum(0), beta.to(a.dtype))
            if need_x:
                dx = dh.matmul(weight)
        return None if dx is None else dx.to(ctx.dtype), da, db, None, None, None, None


def lora_delta(x: Tensor, a: Tensor, b: Tensor, scaling: float, p: float = 0.0, training: bool = True,
               gamma: Tensor | None = None, beta: Tensor | None = None) -> Tensor:
    """s * B A drop(z) (see the module docstring): ``a`` (r, d) and ``b`` (out, r) are the weights of lora_A and
    lora_B, ``p`` the dropout probability (applied only in ``training``), ``gamma``/``beta`` a folded norm's affine."""
    active = dropout_active(x, p, training)
    if training and p == 1:
        return F.linear(F.linear(x.to(a.dtype) * 0, a), b) * scaling
    return LoraDeltaFunction.apply(x, a, b, scaling, p if active else 0.0, gamma, beta)
