"""MS-BP LayerNorm / RMSNorm: the backward works from the output y, so the norm itself saves one fp32 rstd per row
and shares y with the layer that reads it (which saves y anyway).

    LayerNorm: y = (x - mean) * rstd,  dx = rstd * (g - mean(g) - y * mean(g * y))
    RMSNorm:   y = x * rstd,           dx = rstd * (g - y * mean(g * y))

Output-saving affine LayerNorm (post-LN blocks): the output z = gamma * y + beta is the residual stream, which the
next layers save anyway; the norm saves z, recovers y = (z - beta) / gamma in the backward, and computes
dgamma = sum(g * y), dbeta = sum(g) and dx with dy = g * gamma from it.

Guard for small gamma.  Rounding z to the output dtype (unit roundoff u) perturbs z by at most u * |z| (plus half
the dtype's smallest subnormal s where z underflows), so the recovered y_j is off by at most
    u * (|y_j| + |beta_j| / |gamma_j|) + s / (2 |gamma_j|),
against u * |y_j| for y itself stored in that dtype.  A feature is *guarded* when
    |beta_j| > GUARD_RATIO * |gamma_j|   or   |gamma_j| < finfo(output dtype).tiny    (= s / 2u),
and the error of every unguarded feature stays below u * (|y_j| + 2), about that of rounding y itself (y has unit
RMS).  For guarded features (gamma_j = 0 among them) the forward also saves y[:, j] in fp32 (fp64 for fp64 inputs),
and the backward uses it, so dx, dgamma and dbeta are exact for every feature whatever gamma is.  Cost: 4 bytes per
row per guarded feature plus 8 bytes per guarded feature; nothing when none is guarded (LayerNorm's init
gamma = 1, beta = 0 guards none).  If all were guarded this is what nn.LayerNorm saves for an fp32 input (x).
The guarded count k is data-dependent: the ops return the (k,) indices and the (rows, k) values as outputs with a
dynamic size (``new_dynamic_size`` in the fake impl), which ``torch.compile(fullgraph=True)`` traces; on CUDA
finding them costs one host sync per forward.

Forward-mode AD (jvp, jacfwd, forward_ad) gives the exact tangents: rstd * (t [- mean(t)] - y * mean(t * y)), and
w * that + y * t_w + t_b for the affine norm (``approxbp.ops.tangent``).

Non-finite rows.  A row with an inf or NaN gives a NaN row (y, and so dx, as torch's norms), and so does a row whose
statistics overflow (mean(xc^2) = inf in the compute dtype, e.g. fp32 features of 1e20): rstd is set to NaN there
instead of 1/sqrt(inf) = 0, which would give y = 0 and dx = 0 silently; torch's LayerNorm gives NaN for such rows on
some CPUs and 0 on others.  The NaN is in the saved rstd, so no memory is added.

Under autocast the output has the autocast dtype, so that a following stock linear saves this very tensor instead of
a cast copy (for the affine norm this also makes the residual stream that dtype).  Statistics and gradients are
computed in fp32 (fp64 for fp64 inputs).  Forward and backward are ``torch.library`` custom ops (namespace
``approxbp``).  They run the Triton kernels for CUDA tensors and the pure-PyTorch reference below for CPU tensors
(and for CUDA rows wider than the kernels' ``MAX_BLOCK``); ``use_backend("triton")`` forces the kernels (on CPU
tensors they run in Triton's interpreter: ``approxbp.kernels.launch.on_device``) and raises for what they do not
support.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from approxbp.ops.backend import check_float_tensor, contiguous, kernel, row_blocks, runs_kernels
from approxbp.ops.step import compute_dtype
from approxbp.ops.tangent import delta, needs_composite, with_tangent

__all__ = [
    "GUARD_RATIO",
    "guarded_features",
    "ms_layer_norm",
    "ms_layer_norm_affine",
    "ms_norm_affine_backward_reference",
    "ms_norm_affine_forward_reference",
    "ms_norm_backward_reference",
    "ms_norm_forward_reference",
    "ms_rms_norm",
]

GUARD_RATIO = 1.0  # y_j is saved, not recovered from z, where |beta_j| > GUARD_RATIO * |gamma_j|


def _runs_kernels(x: Tensor) -> bool:
    return runs_kernels(x, "MS-norm", lambda: kernel("ms_norm", "MAX_BLOCK"))


def guarded_features(weight: Tensor, bias: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """int64 indices of the features whose y the affine norm saves instead of recovering it from its output:
    |bias| > GUARD_RATIO * |weight| or |weight| < finfo(out_dtype).tiny (compared in fp64)."""
    w = weight.detach().abs().double()
    mask = w < torch.finfo(out_dtype).tiny
    if bias is not None:
        mask |= bias.detach().abs().double() > GUARD_RATIO * w
    return mask.nonzero().squeeze(1)


# ---------------------------------------------------------------- pure-PyTorch reference
#
# The functions take x (and g) in any shape whose last ``dims`` dims (the weight's for the affine norm) are normalized
# and return their outputs in that shape: each output is allocated whole, and its rows x features view is what the
# code writes, so that it is no view itself (an in-place op on a view of an autograd output is a hazard, and FSDP2
# warns about modules returning views).  LayerNorm runs torch's fused native_layer_norm (fp16/bf16 inputs with fp32
# ones as weight, so that its rstd is fp32), RMSNorm rstd = rsqrt(||x||^2 / n + eps) from one vector_norm pass and
# y = x * rstd; the backward runs in blocks of rows.  Whatever the sizes, the scratch memory is a few blocks
# (``approxbp.ops.backend``).


def _rows(t: Tensor, dims: int) -> Tensor:
    """The rows x features view of a contiguous ``t`` whose last ``dims`` dims are the normalized features."""
    return t.view(math.prod(t.shape[:t.dim() - dims]), math.prod(t.shape[t.dim() - dims:]))


def _fix_overflowed_rows(y: Tensor, rstd: Tensor) -> None:
    """rstd = 0 only where mean(xc^2) overflowed to inf: NaN for those rows (y (rows, n) and rstd), in place."""
    bad = rstd == 0
    if bool(bad.any()):
        rstd.masked_fill_(bad, math.nan)
        y.masked_fill_(bad[:, None], math.nan)


def _layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, dims: int,
                out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(weight * y + bias in ``out_dtype`` and x's shape, mean, rstd), y = (x - mean) * rstd over the last ``dims``
    dims of a contiguous x: torch's fused LayerNorm (weight and bias optional, in the normalized shape) in the
    compute dtype, rounded once."""
    dtype, x2 = compute_dtype(x.dtype), _rows(x, dims)
    rows, n = x2.shape
    mean, rstd = x.new_empty(rows, dtype=dtype), x.new_empty(rows, dtype=dtype)
    if x.dtype == dtype == out_dtype:  # the fused op's output is the output itself: no block, no copy
        out, whole_mean, whole_rstd = torch.native_layer_norm(x, x.shape[x.dim() - dims:], weight, bias, eps)
        mean[:], rstd[:] = whole_mean.view(-1), whole_rstd.view(-1)
        return out, mean, rstd
    out = x.new_empty(x.shape, dtype=out_dtype)
    out2 = _rows(out, dims)
    w, b = (None if p is None else p.reshape(n) for p in (weight, bias))
    for r0, r1 in row_blocks(rows, n):
        out2[r0:r1], block_mean, block_rstd = torch.native_layer_norm(x2[r0:r1].to(dtype), [n], w, b, eps)
        mean[r0:r1], rstd[r0:r1] = block_mean.view(-1), block_rstd.view(-1)
    return out, mean, rstd


def _layer_norm_dx(g: Tensor, y: Tensor, rstd: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                   out: Tensor | None = None):
    """(dx, dweight, dbias) of LayerNorm from its normalised output y (rows x features, the compute dtype): torch's
    fused LayerNorm backward at mean 0, rstd 1 (so that its x_hat is y itself) gives rstd^-1 dx, sum(g * y) and
    sum(g); dx is then ``norm_dx(g * weight, y, rstd, False)``, in fewer passes (written into ``out`` if given, the
    one rounding to out's dtype)."""
    ones = rstd.new_ones(rstd.shape[0], 1)
    mask = [True, weight is not None, weight is not None]
    bias = bias if bias is not None or weight is None else torch.zeros_like(weight)
    dx, dw, db = torch.ops.aten.native_layer_norm_backward(g, y, [y.shape[-1]], torch.zeros_like(ones), ones,
                                                            weight, bias, mask)
    if out is None:
        return dx.mul_(rstd[:, None]), dw, db
    if out.dtype == dx.dtype:
        return torch.mul(dx, rstd[:, None], out=out), dw, db
    out.copy_(dx.mul_(rstd[:, None]))
    return out, dw, db


def ms_norm_forward_reference(x: Tensor, eps: float, rms: bool, out_dtype: torch.dtype,
                              dims: int = 1) -> tuple[Tensor, Tensor]:
    """(y in ``out_dtype`` and x's shape, rstd (rows,)) of LayerNorm (``rms=False``) or RMSNorm without affine over
    the last ``dims`` dims of x."""
    (x,) = contiguous(x)
    if not rms:
        y, _, rstd = _layer_norm(x, None, None, eps, dims, out_dtype)
    else:
        x2, dtype = _rows(x, dims), compute_dtype(x.dtype)
        rows, n = x2.shape
        rstd = torch.linalg.vector_norm(x2, dim=-1, dtype=dtype).square_().div_(n).add_(eps).rsqrt_()
        y = x.new_empty(x.shape, dtype=out_dtype)
        y2 = _rows(y, dims)
        for r0, r1 in [(0, rows)] if out_dtype == dtype else row_blocks(rows, n):  # y = x * rstd, rounded once
            if out_dtype == dtype:
                torch.mul(x2[r0:r1], rstd[r0:r1, None], out=y2[r0:r1])
            else:
                y2[r0:r1] = x2[r0:r1] * rstd[r0:r1, None]
    _fix_overflowed_rows(_rows(y, dims), rstd)
    return y, rstd


def norm_dx(g: Tensor, y: Tensor, rstd: Tensor, rms: bool) -> Tensor:
    """rstd * (g - y * mean(g * y) [- mean(g)]) (g, y rows x features, all in the compute dtype): MS-BP's dx from the
    output, and the exact tangent map of the norms (J is symmetric)."""
    dx = g - y * (torch.linalg.vecdot(g, y) / g.shape[-1])[:, None]
    if not rms:
        dx = dx - g.mean(-1, keepdim=True)
    return dx * rstd[:, None]


def ms_norm_backward_reference(g: Tensor, y: Tensor, rstd: Tensor, rms: bool, dx_dtype: torch.dtype,
                               dims: int = 1) -> Tensor:
    """dx from the output (``norm_dx``) in y's shape, in blocks of rows, rounded to ``dx_dtype``."""
    g, y = contiguous(g, y)
    dx = y.new_empty(y.shape, dtype=dx_dtype)
    (rows, n), dtype = _rows(y, dims).shape, rstd.dtype
    g2, y2, dx2 = _rows(g, dims), _rows(y, dims), _rows(dx, dims)
    for r0, r1 in row_blocks(rows, n):
        gb, yb = g2[r0:r1].to(dtype), y2[r0:r1].to(dtype)
        if rms:
            dx2[r0:r1] = norm_dx(gb, yb, rstd[r0:r1], rms)
        else:
            _layer_norm_dx(gb, yb, rstd[r0:r1], out=dx2[r0:r1])
    return dx


def ms_norm_affine_forward_reference(x: Tensor, weight: Tensor, bias: Tensor | None, idx: Tensor, eps: float,
                                     out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(z = weight * y + bias in ``out_dtype`` and x's shape, rstd (rows,), y[:, idx]) of LayerNorm over the last
    ``weight.dim()`` dims of x (``idx`` indexes the flattened features)."""
    (x,) = contiguous(x)
    dtype, dims = compute_dtype(x.dtype), weight.dim()
    z, mean, rstd = _layer_norm(x, weight.to(dtype), None if bias is None else bias.to(dtype), eps, dims, out_dtype)
    _fix_overflowed_rows(_rows(z, dims), rstd)
    y_tiny = (_rows(x, dims).index_select(1, idx).to(dtype) - mean[:, None]) * rstd[:, None]
    return z, rstd, y_tiny


def ms_norm_affine_backward_reference(g: Tensor, z: Tensor, weight: Tensor, bias: Tensor | None, rstd: Tensor,
                                      idx: Tensor, y_tiny: Tensor,
                                      dx_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(dx in z's shape and ``dx_dtype``, dweight, dbias in the weight's shape and rstd's dtype) from the output z, in
    blocks of rows: y = y_tiny on the guarded features ``idx``, (z - bias) / weight elsewhere, and dy = g * weight."""
    g, z = contiguous(g, z)
    dtype, dims = rstd.dtype, weight.dim()
    (rows, n), g2, z2 = _rows(z, dims).shape, _rows(g, dims), _rows(z, dims)
    w = weight.to(dtype).reshape(n)
    w_safe = w.index_fill(0, idx, 1.0)
    dx = z.new_empty(z.shape, dtype=dx_dtype)
    dw, db = z.new_zeros(weight.shape, dtype=dtype), z.new_zeros(weight.shape, dtype=dtype)
    dx2, dw1, db1 = _rows(dx, dims), dw.view(n), db.view(n)
    b = None if bias is None else bias.to(dtype).reshape(n)
    for r0, r1 in row_blocks(rows, n):
        yb = z2[r0:r1].to(dtype, copy=True) if b is None else torch.sub(z2[r0:r1].to(dtype), b)
        yb.div_(w_safe)
        if idx.numel():
            yb.index_copy_(1, idx, y_tiny[r0:r1].to(dtype))
        _, dw_block, db_block = _layer_norm_dx(g2[r0:r1].to(dtype), yb, rstd[r0:r1], w, b, out=dx2[r0:r1])
        dw1.add_(dw_block)
        db1.add_(db_block)
    return dx, dw, db


# ---------------------------------------------------------------- custom ops and their autograd
#
# They take x (g) in its own shape, normalized over the last ``dims`` dims (the weight's), and return their outputs
# in that shape: the Triton host functions write the rows x features views of outputs allocated here.


def _stat_rows(x: Tensor, dims: int) -> int:
    """The number of rows: the product of x's leading dims (all but the last ``dims``)."""
    return math.prod(x.shape[:x.dim() - dims])


@torch.library.custom_op("approxbp::ms_norm_fwd", mutates_args=())
def _ms_norm_fwd(x: Tensor, dims: int, eps: float, rms: bool, out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    (x,) = contiguous(x)
    if _runs_kernels(x):
        y, rstd = x.new_empty(x.shape, dtype=out_dtype), x.new_empty(_stat_rows(x, dims), dtype=torch.float32)
        kernel("ms_norm", "ms_norm_fwd")(_rows(x, dims), eps, rms, _rows(y, dims), rstd)
        return y, rstd
    return ms_norm_forward_reference(x, eps, rms, out_dtype, dims)


@_ms_norm_fwd.register_fake
def _(x, dims, eps, rms, out_dtype):
    return (x.new_empty(x.shape, dtype=out_dtype),
            x.new_empty(_stat_rows(x, dims), dtype=compute_dtype(x.dtype)))


@torch.library.custom_op("approxbp::ms_norm_bwd", mutates_args=())
def _ms_norm_bwd(g: Tensor, y: Tensor, rstd: Tensor, dims: int, rms: bool, dx_dtype: torch.dtype) -> Tensor:
    g, y = contiguous(g, y)
    if _runs_kernels(y):
        dx = y.new_empty(y.shape, dtype=dx_dtype)
        kernel("ms_norm", "ms_norm_bwd")(_rows(g, dims), _rows(y, dims), rstd, rms, _rows(dx, dims))
        return dx
    return ms_norm_backward_reference(g, y, rstd, rms, dx_dtype, dims)


@_ms_norm_bwd.register_fake
def _(g, y, rstd, dims, rms, dx_dtype):
    return y.new_empty(y.shape, dtype=dx_dtype)


def _ms_norm_setup(ctx, inputs, output):
    x, dims, _, rms, _ = inputs
    y, rstd = output
    ctx.mark_non_differentiable(rstd)
    ctx.save_for_backward(y, rstd)
    ctx.dims, ctx.rms, ctx.dx_dtype = dims, rms, x.dtype


def _ms_norm_backward(ctx, gy, _):
    y, rstd = ctx.saved_tensors
    return _ms_norm_bwd(gy, y, rstd, ctx.dims, ctx.rms, ctx.dx_dtype), None, None, None, None


_ms_norm_fwd.register_autograd(_ms_norm_backward, setup_context=_ms_norm_setup)


@_ms_norm_fwd.register_vmap
def _(info, in_dims, x, dims, eps, rms, out_dtype):
    """Per row: the batch first is more rows; rstd (rows,) per sample."""
    y, rstd = _ms_norm_fwd(x.movedim(in_dims[0], 0), dims, eps, rms, out_dtype)
    return (y, rstd.view(info.batch_size, rstd.numel() // info.batch_size)), (0, 0)


@torch.library.custom_op("approxbp::ms_norm_affine_fwd", mutates_args=())
def _ms_norm_affine_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float,
                        out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, weight, bias = contiguous(x, weight, bias)
    idx = guarded_features(weight.view(-1), None if bias is None else bias.view(-1), out_dtype)
    if _runs_kernels(x):
        dims, rows = weight.dim(), _stat_rows(x, weight.dim())
        z, rstd = x.new_empty(x.shape, dtype=out_dtype), x.new_empty(rows, dtype=torch.float32)
        y_tiny = x.new_empty((rows, idx.numel()), dtype=torch.float32)
        kernel("ms_norm", "ms_norm_affine_fwd")(_rows(x, dims), weight.view(-1), None if bias is None else
                                                bias.view(-1), idx, eps, _rows(z, dims), rstd, y_tiny)
    else:
        z, rstd, y_tiny = ms_norm_affine_forward_reference(x, weight, bias, idx, eps, out_dtype)
    return z, rstd, idx, y_tiny


@_ms_norm_affine_fwd.register_fake
def _(x, weight, bias, eps, out_dtype):
    k = torch.library.get_ctx().new_dynamic_size()
    stat, rows = compute_dtype(x.dtype), _stat_rows(x, weight.dim())
    return (x.new_empty(x.shape, dtype=out_dtype), x.new_empty(rows, dtype=stat),
            x.new_empty((k,), dtype=torch.int64), x.new_empty((rows, k), dtype=stat))


@torch.library.custom_op("approxbp::ms_norm_affine_bwd", mutates_args=())
def _ms_norm_affine_bwd(g: Tensor, z: Tensor, weight: Tensor, bias: Tensor | None, rstd: Tensor, idx: Tensor,
                        y_tiny: Tensor, dx_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    g, z, weight, bias, y_tiny = contiguous(g, z, weight, bias, y_tiny)
    if _runs_kernels(z):
        dims = weight.dim()
        dx = z.new_empty(z.shape, dtype=dx_dtype)
        dw, db = z.new_empty(weight.shape, dtype=torch.float32), z.new_empty(weight.shape, dtype=torch.float32)
        kernel("ms_norm", "ms_norm_affine_bwd")(_rows(g, dims), _rows(z, dims), weight.view(-1),
                                                None if bias is None else bias.view(-1), rstd, idx, y_tiny,
                                                _rows(dx, dims), dw.view(-1), db.view(-1))
    else:
        dx, dw, db = ms_norm_affine_backward_reference(g, z, weight, bias, rstd, idx, y_tiny, dx_dtype)
    return dx, dw.to(weight.dtype), db.to(weight.dtype if bias is None else bias.dtype)


@_ms_norm_affine_bwd.register_fake
def _(g, z, weight, bias, rstd, idx, y_tiny, dx_dtype):
    return z.new_empty(z.shape, dtype=dx_dtype), torch.empty_like(weight), torch.empty_like(weight if bias is None
                                                                                              else bias)


def _ms_norm_affine_setup(ctx, inputs, output):
    x, weight, bias, _, _ = inputs
    z, rstd, idx, y_tiny = output
    ctx.mark_non_differentiable(rstd, idx, y_tiny)
    ctx.save_for_backward(z, weight, bias, rstd, idx, y_tiny)
    ctx.dx_dtype = x.dtype


def _ms_norm_affine_backward(ctx, gz, *_):
    z, weight, bias, rstd, idx, y_tiny = ctx.saved_tensors
    dx, dw, db = _ms_norm_affine_bwd(gz, z, weight, bias, rstd, idx, y_tiny, ctx.dx_dtype)
    return dx, dw, None if bias is None else db, None, None


_ms_norm_affine_fwd.register_autograd(_ms_norm_affine_backward, setup_context=_ms_norm_affine_setup)


@_ms_norm_affine_fwd.register_vmap
def _(info, in_dims, x, weight, bias, eps, out_dtype):
    """Per row, as ``_ms_norm_fwd``'s; the guarded features depend on the weight, so it cannot be batched."""
    if in_dims[1] is not None or in_dims[2] is not None:
        raise ValueError("ms_layer_norm_affine under torch.func.vmap: weight and bias cannot be batched")
    z, rstd, idx, y_tiny = _ms_norm_affine_fwd(x.movedim(in_dims[0], 0), weight, bias, eps, out_dtype)
    batch, rows = info.batch_size, rstd.numel() // info.batch_size
    return (z, rstd.view(batch, rows), idx, y_tiny.view(batch, rows, y_tiny.shape[-1])), (0, 0, None, 0)


# ---------------------------------------------------------------- public functional API


def _check_input(x: Tensor, normalized_shape: int | Sequence[int], eps: float) -> tuple[int, ...]:
    """Validate before any kernel runs; return normalized_shape as a tuple."""
    check_float_tensor("x", x)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"normalized_shape must be a non-empty sequence of positive ints, got {normalized_shape!r}")
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"normalized_shape {shape} does not match the last dimensions of x {tuple(x.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return shape


def _check_param(name: str, p: Tensor, x: Tensor) -> None:
    check_float_tensor(name, p)
    if p.device != x.device:
        raise ValueError(f"{name} is on {p.device} but x is on {x.device}")
    if p.dim() == 0 or p.dim() > x.dim() or x.shape[x.dim() - p.dim():] != p.shape:
        raise ValueError(f"{name} has shape {tuple(p.shape)}, which is not the trailing shape of x {tuple(x.shape)}")


def _out_dtype(x: Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for x's device (so the next layer shares the output), else x's
    (``meta`` tensors, used for shape-only memory profiling, have no autocast state)."""
    device = x.device.type
    if device in ("cpu", "cuda") and x.dtype != torch.float64 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _norm(x: Tensor, normalized_shape: int | Sequence[int], eps: float, rms: bool) -> Tensor:
    dims = len(_check_input(x, normalized_shape, eps))
    if needs_composite(x):  # forward AD or torch.func: the exact tangent J t, J symmetric (approxbp.ops.tangent)
        y, rstd = _ms_norm_fwd(x.detach(), dims, float(eps), rms, _out_dtype(x))
        y2 = _rows(y.to(rstd.dtype), dims)
        jt = norm_dx(delta(x, rstd.dtype).reshape(y2.shape), y2, rstd, rms)
        return with_tangent(y, jt.view(x.shape))
    y, _ = _ms_norm_fwd(x, dims, float(eps), rms, _out_dtype(x))
    return y


def ms_layer_norm(x: Tensor, normalized_shape: int | Sequence[int], eps: float = 1e-5) -> Tensor:
    """LayerNorm without affine over the last ``len(normalized_shape)`` dims; saves only rstd besides its output."""
    return _norm(x, normalized_shape, eps, rms=False)


def ms_rms_norm(x: Tensor, normalized_shape: int | Sequence[int], eps: float = 1e-6) -> Tensor:
    """RMSNorm without affine over the last ``len(normalized_shape)`` dims; saves only rstd besides its output."""
    return _norm(x, normalized_shape, eps, rms=True)


def ms_layer_norm_affine(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Output-saving affine LayerNorm over the last ``weight.dim()`` dims: z = weight * y + bias (bias None: 0).
    Saves z, rstd and, for the guarded features (see the module docstring), y in fp32."""
    check_float_tensor("x", x)
    _check_param("weight", weight, x)
    if bias is not None:
        _check_param("bias", bias, x)
        if bias.shape != weight.shape:
            raise ValueError(f"bias has shape {tuple(bias.shape)} but weight has shape {tuple(weight.shape)}")
    _check_input(x, tuple(weight.shape), eps)
    if needs_composite(x, weight, bias):  # forward AD or torch.func: w J t_x + y t_w + t_b, exact (ops.tangent)
        z, *_ = _ms_norm_affine_fwd(x.detach(), weight.detach(), None if bias is None else bias.detach(), float(eps),
                                    _out_dtype(x))
        dims = weight.dim()
        y, rstd = _ms_norm_fwd(x.detach(), dims, float(eps), False, compute_dtype(x.dtype))
        y, dt, n = _rows(y, dims), rstd.dtype, weight.numel()
        jt = weight.detach().to(dt).reshape(n) * norm_dx(delta(x, dt).reshape(y.shape), y, rstd, False)
        jt = jt + y * delta(weight, dt).reshape(n)
        return with_tangent(z, (jt if bias is None else jt + delta(bias, dt).reshape(n)).view(x.shape))
    z, *_ = _ms_norm_affine_fwd(x, weight, bias, float(eps), _out_dtype(x))
    return z
