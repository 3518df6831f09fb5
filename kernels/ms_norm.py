"""Triton kernels of MS-BP LayerNorm / RMSNorm: the forward saves only rstd, the backward works from the output.

Rows are the leading dimensions flattened; the normalized features of a row are contiguous (stride 1) and fit in
one block of ``BLOCK = next_power_of_2(N)`` lanes.  Statistics and gradient math are fp32 whatever the I/O dtype.

The affine variant writes z = w * y + b.  Features listed in ``idx`` (see ``approxbp.ops.ms_norm``) also get their
y written to ``y_tiny`` (rows x k, fp32) in the forward, and the backward takes y from there instead of
recovering it as (z - b) / w.  Inside the kernels a per-feature ``slot`` map (-1, or the column in ``y_tiny``)
stands for ``idx``.

Indexing: every row index is int64 (``program_id`` is cast before it is multiplied by a row stride), so
``row * stride`` cannot wrap around for tensors above 2^31 elements; in-row offsets are below
``BLOCK <= MAX_BLOCK`` and fit in int32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.standard import _sum_combine

from .launch import on_device

# One row lives in one program's registers (at most 65536 / threads each).  Wider blocks spill to local memory when
# compiled for sm_80/sm_90 (tests/kernels/test_aot_compile.py): at BLOCK 16384 the affine kernels (fp32: forward 256,
# backward 376 bytes with guarded features), at 32768 the plain backward, at 65536 every kernel.  Wider rows run on
# the reference (approxbp.ops.ms_norm); a row loop in chunks would lift the limit.
MAX_BLOCK = 8192


@triton.jit
def _sum(x):
    """tl.sum of an fp32 vector, spelled with builtins only: then the kernels also run under TRITON_INTERPRET=1 when
    triton.language was imported before the variable was set (the interpreter cannot call the stdlib's @jit
    functions then, and it recognises ``_sum_combine`` to reduce with numpy)."""
    return tl.reduce(x, 0, _sum_combine)


@triton.jit
def _ms_norm_fwd_kernel(X, Y, W, B, SLOT, YT, RSTD, stride_x, stride_y, N, K, eps,
                        RMS: tl.constexpr, AFFINE: tl.constexpr, HAS_BIAS: tl.constexpr, GUARD: tl.constexpr,
                        BLOCK: tl.constexpr):
    """One program per row.
    LayerNorm: mu = mean(x), rstd = 1/sqrt(mean((x - mu)^2) + eps), y = (x - mu) * rstd.
    RMSNorm:   rstd = 1/sqrt(mean(x^2) + eps), y = x * rstd.
    rstd = NaN (so a NaN row) where mean((x - mu)^2) or mean(x^2) overflows to inf.
    AFFINE writes z = w * y (+ b) instead of y, and with GUARD y of the slotted features to YT.
    Writes rstd (fp32) and the output in Y's dtype."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if RMS:
        xc = x
    else:
        xc = tl.where(mask, x - _sum(x) / N, 0.0)
    rstd = 1.0 / tl.sqrt(_sum(xc * xc) / N + eps)
    rstd = tl.where(rstd > 0.0, rstd, float("nan"))  # 0 only where the sum of squares overflowed: a NaN row
    y = xc * rstd
    if AFFINE:
        if GUARD:
            slot = tl.load(SLOT + cols, mask=mask, other=-1)
            tl.store(YT + row * K + slot, y, mask=slot >= 0)
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _ms_norm_bwd_kernel(G, Y, W, B, SLOT, YT, RSTD, DX, DW, DB, stride_g, stride_y, stride_dx, M, N, K,
                        rows_per_program, RMS: tl.constexpr, AFFINE: tl.constexpr, HAS_BIAS: tl.constexpr,
                        GUARD: tl.constexpr, BLOCK: tl.constexpr):
    """Each program handles rows [pid * rows_per_program, ...) and rebuilds y from the saved output.
    Without AFFINE, Y holds y and dy = g.  With AFFINE, Y holds z, dy = g * w and
        y = YT[row, slot] for slotted features, (z - b) / w for the others,
    and the program writes fp32 partial sums dw[pid] = sum_rows g * y, db[pid] = sum_rows g.
        LayerNorm: dx = rstd * (dy - mean(dy) - y * mean(dy * y))
        RMSNorm:   dx = rstd * (dy - y * mean(dy * y))"""
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    if AFFINE:
        w = tl.load(W + cols, mask=mask, other=1.0).to(tl.float32)
        if HAS_BIAS:
            b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        else:
            b = tl.zeros([BLOCK], tl.float32)
        if GUARD:
            slot = tl.load(SLOT + cols, mask=mask, other=-1)
            w_div = tl.where(slot >= 0, 1.0, w)
        else:
            w_div = w
        dw = tl.zeros([BLOCK], tl.float32)
        db = tl.zeros([BLOCK], tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(Y + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        if AFFINE:
            y = (y - b) / w_div
            if GUARD:
                y = tl.where(slot >= 0, tl.load(YT + row * K + slot, mask=slot >= 0, other=0.0), y)
            dw += g * y
            db += g
            dy = g * w
        else:
            dy = g
        c = _sum(dy * y) / N
        if RMS:
            dx = (dy - y * c) * rstd
        else:
            dx = (dy - _sum(dy) / N - y * c) * rstd
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
    if AFFINE:
        tl.store(DW + pid * N + cols, dw, mask=mask)
        tl.store(DB + pid * N + cols, db, mask=mask)


def _settings(n: int) -> tuple[int, int]:
    """BLOCK (next power of 2 of n) and num_warps, as Liger's ``calculate_settings`` up to MAX_BLOCK."""
    block = triton.next_power_of_2(n)
    if block > MAX_BLOCK:
        raise ValueError(f"the Triton MS-norm supports at most {MAX_BLOCK} normalized features, got {n}")
    num_warps = 16 if block >= 8192 else 8 if block >= 2048 else 4
    return block, num_warps


def _slots(idx: torch.Tensor, n: int) -> torch.Tensor:
    """int32 (n,): the column of feature j in y_tiny, -1 for features recovered from z."""
    slot = torch.full((n,), -1, dtype=torch.int32, device=idx.device)
    slot[idx] = torch.arange(idx.numel(), dtype=torch.int32, device=idx.device)
    return slot


# Host functions: as every kernel's (``approxbp.ops.backend``), they take contiguous inputs and write into outputs
# the op allocated; scratch (the affine backward's per-program partial sums) is theirs.


def ms_norm_fwd(x: torch.Tensor, eps: float, rms: bool, y: torch.Tensor, rstd: torch.Tensor) -> None:
    """x, y: (M, N), rstd: fp32 (M,).  Write the normalized x (in y's dtype) into ``y`` and its rstd into ``rstd``."""
    _fwd(x, eps, rms, y, rstd, None, None, None, None)


def ms_norm_affine_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, idx: torch.Tensor,
                       eps: float, z: torch.Tensor, rstd: torch.Tensor, y_tiny: torch.Tensor) -> None:
    """x, z: (M, N), weight/bias: (N,), idx: int64 (k,), rstd: fp32 (M,), y_tiny: fp32 (M, k).  Write
    z = weight * y + bias (in z's dtype), rstd and y[:, idx]."""
    _fwd(x, eps, False, z, rstd, weight, bias, idx, y_tiny)


def _fwd(x, eps, rms, y, rstd, weight, bias, idx, y_tiny):
    m, n = x.shape
    block, num_warps = _settings(n)
    if not m:
        return
    affine = weight is not None
    k = idx.numel() if affine else 0
    w = weight if affine else x
    b = bias if bias is not None else w
    slot, yt = (_slots(idx, n), y_tiny) if k else (rstd, rstd)
    on_device(_ms_norm_fwd_kernel, x)[(m,)](x, y, w, b, slot, yt, rstd, x.stride(0), y.stride(0), n, k, eps,
                                            RMS=rms, AFFINE=affine, HAS_BIAS=bias is not None, GUARD=k > 0,
                                            BLOCK=block, num_warps=num_warps)


def ms_norm_bwd(g: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor, rms: bool, dx: torch.Tensor) -> None:
    """g, y, dx: (M, N).  Write dx (in dx's dtype) into ``dx``."""
    _bwd(g, y, rstd, rms, dx, None, None, None, None, None, None)


def ms_norm_affine_bwd(g: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       rstd: torch.Tensor, idx: torch.Tensor, y_tiny: torch.Tensor, dx: torch.Tensor,
                       dweight: torch.Tensor, dbias: torch.Tensor) -> None:
    """g, z, dx: (M, N), dweight/dbias: fp32 (N,).  Write dx (in dx's dtype), dweight = sum_rows g * y and
    dbias = sum_rows g."""
    _bwd(g, z, rstd, False, dx, weight, bias, idx, y_tiny, dweight, dbias)


def _bwd(g, y, rstd, rms, dx, weight, bias, idx, y_tiny, dweight, dbias):
    m, n = y.shape
    block, num_warps = _settings(n)
    affine = weight is not None
    if affine:  # a few programs loop over rows and keep fp32 partial sums of dw, db
        cap = 4 * torch.cuda.get_device_properties(y.device).multi_processor_count if y.is_cuda else 8
        programs = max(1, min(m, cap))
        dw = torch.zeros((programs, n), dtype=torch.float32, device=y.device)
        db = torch.zeros((programs, n), dtype=torch.float32, device=y.device)
        k = idx.numel()
    else:
        programs, dw, db, k = m, rstd, rstd, 0
    if m:
        w = weight if affine else y
        b = bias if bias is not None else w
        slot, yt = (_slots(idx, n), y_tiny) if k else (rstd, rstd)
        on_device(_ms_norm_bwd_kernel, y)[(programs,)](g, y, w, b, slot, yt, rstd, dx, dw, db, g.stride(0),
                                                       y.stride(0), dx.stride(0), m, n, k, triton.cdiv(m, programs),
                                                       RMS=rms, AFFINE=affine, HAS_BIAS=bias is not None,
                                                       GUARD=k > 0, BLOCK=block, num_warps=num_warps)
    if affine:
        torch.sum(dw, 0, out=dweight)
        torch.sum(db, 0, out=dbias)
