"""One LoRA adapter's contribution, saving for backward only its input, A's output and a 1-bit dropout mask.

    delta = s * B A drop(z),   z = x  (or z = gamma * y + beta, x = y, behind a folded norm),

with x cast to A's dtype and dropped there (as peft does), the matmuls in A's dtype, or under autocast in the
autocast dtype (A and B cast to it, as autocast casts nn.Linear's input and weight; the op runs with autocast off,
its gradients cast back to each input's dtype: fp32 master weights get fp32 gradients, as through autocast's
casts).  peft's modules save drop(z) for A (a copy of the input, d per token), a dropout mask (1 byte per element on
CUDA, the scaled noise in x's dtype on CPU) and A's output h for B.  This op saves x itself (the tensor the base
layer, the norm or the neighbouring adapters on the same input keep anyway: one storage; only when A trains, LoRA-FA
needs none), h (r per token, only when B trains) and the mask as packed bits (``approxbp.ops.packed_dropout``, drawn
exactly as nn.Dropout draws it); the backward recomputes drop(z) from them.  Gradients, with g = s * dL/ddelta:

    dL/dB = g^T h,   dh = g B,   dL/dA = dh^T drop(z),   dL/dz = keep * scale * (dh A),   dL/dy = gamma * dL/dz.

Without dropout (eval mode, p = 0) behind a folded norm, h = (A diag(gamma)) y + A beta, as ``AffineInputLinear``
computes it, so dL/dA = (dh^T y) diag(gamma) + (sum dh) beta^T and dL/dy = dh A diag(gamma).  gamma/beta get no
gradient (they are copies of folded parameters, see ``approxbp.conversion.fold``).

``save_input=False`` saves instead the tensor A's matmul reads, drop(z) in the compute dtype (z in it without
dropout), from which dL/dA is the same product and dL/dz needs only the mask: exact, and narrower than x where x is
wider than the compute dtype (an fp32 x under bf16 autocast: 2 bytes per element, not 4).  It saves memory only for
an x no other op keeps (QLoRA's gated product, read by a 4-bit down projection that keeps nothing); for an x that is
kept anyway (a norm's output, the residual stream) the copy would be added to it.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from approxbp.ops.packed_dropout import apply_keep, dropout_active, keep_mask, pack_bits, unpack_bits
from approxbp.ops.tangent import func_transforms_active


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def _affine(y: Tensor, gamma: Tensor | None, beta: Tensor | None) -> Tensor:
    """gamma * y + beta in y's dtype, as ``AffineThenDropout`` computes it."""
    if gamma is None:
        return y
    gamma = gamma.to(y.dtype)
    return y * gamma if beta is None else torch.addcmul(beta.to(y.dtype), y, gamma)


def _no_autocast(device_type: str):
    """Autocast off for ``device_type`` inside the op (its casts are explicit), a no-op where it is not on."""
    on = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    return torch.autocast(device_type, enabled=False) if on else nullcontext()


def compute_dtype(x: Tensor, a: Tensor) -> torch.dtype:
    """The dtype A's and B's matmuls run in: the autocast dtype where autocast is on for x's device, else A's."""
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return a.dtype


class LoraDeltaFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, b: Tensor, scaling: float, p: float, gamma: Tensor | None,
                beta: Tensor | None, drop: torch.dtype, compute: torch.dtype, save_input: bool) -> Tensor:
        with _no_autocast(x.device.type):
            xd = x.to(drop)
            if p > 0:
                z = _affine(xd, gamma, beta)
                keep = keep_mask(z, p)
                read = apply_keep(z, keep, p).to(compute)
                h = F.linear(read, a.to(compute))
                ctx.shape = keep.shape
                packed = pack_bits(keep)
            else:
                weight = a if gamma is None else a * gamma.to(a.dtype)
                bias = None if beta is None else F.linear(beta.to(a.dtype), a).to(compute)
                read = xd.to(compute)
                h = F.linear(read, weight.to(compute), bias)
                packed = None
            ctx.scaling, ctx.p, ctx.dtype, ctx.drop, ctx.compute = scaling, p, x.dtype, drop, compute
            ctx.saves_input = save_input
            need_a, need_b = ctx.needs_input_grad[1:3]  # x only for dA, h only for dB (LoRA-FA: no x)
            kept = (x if save_input else read) if need_a else None
            ctx.save_for_backward(kept, h if need_b else None, packed, a, b, gamma, beta)
            return F.linear(h, b.to(compute)) * scaling

    @staticmethod
    def backward(ctx, grad: Tensor):
        with _no_autocast(grad.device.type):
            return LoraDeltaFunction._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: Tensor):
        x, h, packed, a, b, gamma, beta = ctx.saved_tensors
        need_x, need_a, need_b = ctx.needs_input_grad[:3]
        none = (None,) * 7
        g = grad.to(ctx.compute) * ctx.scaling
        db = _flat(g).t().mm(_flat(h)).to(b.dtype) if need_b else None
        if not (need_x or need_a):
            return None, None, db, *none
        dh = g.matmul(b.to(ctx.compute))
        da = dx = None
        if ctx.p > 0:
            keep = unpack_bits(packed, ctx.shape)
            if need_a:
                dropped = apply_keep(_affine(x.to(ctx.drop), gamma, beta), keep, ctx.p).to(ctx.compute) \
                    if ctx.saves_input else x
                da = _flat(dh).t().mm(_flat(dropped)).to(a.dtype)
            if need_x:
                dz = apply_keep(dh.matmul(a.to(ctx.compute)).to(ctx.drop), keep, ctx.p)
                dx = dz if gamma is None else dz * gamma.to(dz.dtype)
        else:
            if need_a:
                read = x.to(ctx.drop).to(ctx.compute) if ctx.saves_input else x
                da = _flat(dh).t().mm(_flat(read)).to(a.dtype)
                if gamma is not None:
                    da = da * gamma.to(a.dtype)
                if beta is not None:
                    da = da + torch.outer(_flat(dh).sum(0).to(a.dtype), beta.to(a.dtype))
            if need_x:
                weight = a if gamma is None else a * gamma.to(a.dtype)
                dx = dh.matmul(weight.to(ctx.compute)).to(ctx.drop)
        return None if dx is None else dx.to(ctx.dtype), da, db, *none


def lora_delta(x: Tensor, a: Tensor, b: Tensor, scaling: float, p: float = 0.0, training: bool = True,
               gamma: Tensor | None = None, beta: Tensor | None = None, drop: torch.dtype | None = None,
               save_input: bool = True) -> Tensor:
    """s * B A drop(z) (see the module docstring): ``a`` (r, d) and ``b`` (out, r) are the weights of lora_A and
    lora_B, ``p`` the dropout probability (applied only in ``training``), ``gamma``/``beta`` a folded norm's affine,
    ``drop`` the dtype x is cast to and dropped in (None: A's), ``save_input`` False: keep A's matmul input instead
    of x."""
    drop = a.dtype if drop is None else drop
    if training and p == 1:
        return F.linear(F.linear(x.to(drop) * 0, a), b) * scaling
    active = dropout_active(x, p, training)
    if func_transforms_active():
        return _lora_delta_composite(x, a, b, scaling, p if active else 0.0, gamma, beta, drop, compute_dtype(x, a))
    return LoraDeltaFunction.apply(x, a, b, scaling, p if active else 0.0, gamma, beta, drop, compute_dtype(x, a),
                                   save_input)


def _lora_delta_composite(x: Tensor, a: Tensor, b: Tensor, scaling: float, p: float, gamma: Tensor | None,
                          beta: Tensor | None, drop: torch.dtype, compute: torch.dtype) -> Tensor:
    """The same delta from differentiable torch ops, for the ``torch.func`` transforms (which refuse autograd
    Functions without ``setup_context``): the same dropout draws and products, autograd's saved tensors; gamma and
    beta get no gradient, as in the op."""
    with _no_autocast(x.device.type):
        z = _affine(x.to(drop), None if gamma is None else gamma.detach(), None if beta is None else beta.detach())
        if p > 0:
            z = F.dropout(z, p, True)  # the mask keep_mask draws, applied as apply_keep applies it
        return F.linear(F.linear(z.to(compute), a.to(compute)), b.to(compute)) * scaling
