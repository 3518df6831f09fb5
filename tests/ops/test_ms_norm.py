"""MS-BP norms: gradients (gradcheck, torch's own norms), Triton (interpreted) vs the reference, saved bytes and
storage sharing under autocast, the small-gamma guard, torch.compile, bad input.

Op variants: "ln" / "rms" without affine; the affine output-saving LayerNorm with gamma ~ 1 ("affine", y recovered
from z everywhere: the memory-saving path), some tiny or zero gamma ("tiny", a mix), all gamma zero ("zero", every
y saved: the memory-saving path off) and without bias ("nobias")."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import approxbp
from approxbp.modules.ms_norm import MSLayerNorm, MSLayerNormAffine, MSRMSNorm
from approxbp.ops import ms_norm as ops
from approxbp.ops.backend import use_backend
from approxbp.saved import record_saved, storage_key

EPS = {"ln": 1e-5, "rms": 1e-6}
AFFINE = ("affine", "tiny", "zero", "nobias")
LOW = (torch.float16, torch.bfloat16)


def _params(variant, n, dtype=torch.float32):
    """(weight, bias) of an affine variant, fp64-generated then cast; None, None for ln / rms."""
    if variant not in AFFINE:
        return None, None
    w = (0.5 + torch.rand(n, dtype=torch.float64)) * torch.randn(n, dtype=torch.float64).sign()
    b = 0.4 * (2 * torch.rand(n, dtype=torch.float64) - 1)  # |b| < |w|: none guarded
    if variant == "tiny":  # guarded: 0, 1e-7 and -1e-30 with a bias; 1e-6 with beta = 0 is recovered (not guarded)
        w[0::5], w[1::5], w[2::5], w[3::5], b[3::5] = 0.0, 1e-7, -1e-30, 1e-6, 0.0
        b[0::5] = 0.5
    elif variant == "zero":
        w.zero_()
    w, b = w.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
    return w, (None if variant == "nobias" else b)


def _ms(variant, x, w, b):
    n = x.shape[-1]
    if variant == "ln":
        return ops.ms_layer_norm(x, n, EPS["ln"])
    if variant == "rms":
        return ops.ms_rms_norm(x, n, EPS["rms"])
    return ops.ms_layer_norm_affine(x, w, b, EPS["ln"])


def _torch(variant, x, w, b):
    n = x.shape[-1]
    if variant == "rms":
        return F.rms_norm(x, (n,), eps=EPS["rms"])
    return F.layer_norm(x, (n,), w, b, EPS["ln"])


def _run(fn, variant, x, w, b, g):
    """Output and gradients (x, weight, bias) of fn; the inputs are detached copies."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = fn(variant, *leaves)
    y.backward(g)
    return [y.detach()] + [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize("variant", ["ln", "rms", *AFFINE])
def test_gradcheck_float64(variant):
    x = torch.randn(3, 2, 10, dtype=torch.float64, requires_grad=True)
    w, b = _params(variant, 10, torch.float64)
    inputs = tuple(t for t in (x, w, b) if t is not None)
    assert torch.autograd.gradcheck(lambda *t: _ms(variant, *t, *[None] * (3 - len(t))), inputs)


def test_gradcheck_two_normalized_dims():
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    w, b = _params("tiny", 15, torch.float64)
    assert torch.autograd.gradcheck(lambda t: ops.ms_layer_norm(t, (3, 5)), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.ms_rms_norm(t, [3, 5]), (x,))
    assert torch.autograd.gradcheck(ops.ms_layer_norm_affine, (x, w.detach().view(3, 5).requires_grad_(),
                                                               b.detach().view(3, 5).requires_grad_()))


@pytest.mark.parametrize("n", [1, 3, 768, 4097])
@pytest.mark.parametrize("rows", [1, 7, 1000])
@pytest.mark.parametrize("variant", ["ln", "rms", "tiny", "zero"])
def test_matches_torch_float32(variant, rows, n):
    """Forward and every gradient equal torch's in fp32 (reference path): within fp32 noise at the scale of the
    terms (dx: rstd * |g|, which matters for rms with n = 1, a cancellation to ~eps * g / x^3) plus torch's own
    fp32 error (for n = 1 torch's dgamma is ~1e-5 where the exact value, and ours, is 0)."""
    x = torch.randn(rows, n) * 2 + 0.5
    g = torch.randn(rows, n)
    w, b = _params(variant, n)
    ours, ref = _run(_ms, variant, x, w, b, g), _run(_torch, variant, x, w, b, g)
    truth = _run(_torch, variant, x.double(), *(t.double() if t is not None else None for t in (w, b)), g.double())
    rstd = torch.rsqrt((x if variant == "rms" else x - x.mean(-1, keepdim=True)).square().mean(-1, keepdim=True))
    scales = [1.0, (rstd * g.abs()).max().item(), rows ** 0.5 * 3, rows ** 0.5 * 3]
    for a, e, t, s in zip(ours, ref, truth, scales[:len(ours)], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=2e-6 * s + (e.double() - t).abs().max().item())


@pytest.mark.parametrize("n", [3, 130, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, *LOW])
@pytest.mark.parametrize("variant", ["ln", "rms", "affine", "tiny"])
def test_error_vs_float64_within_twice_torchs(variant, dtype, n):
    """Rule: the relative (Frobenius) error of our output and gradients against float64 torch, on the same rounded
    inputs, is at most twice that of torch's own norm in ``dtype`` plus a floor: one unit roundoff u for the output
    and dx, sqrt(rows) u for dw and db, which are sums over the rows (torch's own error can be far below that by
    luck: 2 u on a 3-feature dw where ours is 5 u, both within the sum's rounding)."""
    torch.manual_seed(0)
    x = (torch.randn(64, n) * 3 + 1).to(dtype)
    g = torch.randn(64, n).to(dtype)
    w, b = _params(variant, n, dtype)
    truth = _run(_torch, variant, x.double(), *(t.double() if t is not None else None for t in (w, b)), g.double())
    ours, theirs = _run(_ms, variant, x, w, b, g), _run(_torch, variant, x, w, b, g)
    u = torch.finfo(dtype).eps / 2
    floors = [u, u, 8 * u, 8 * u]  # y, dx, dw, db: sqrt(64 rows) = 8
    for a, e, t, floor in zip(ours, theirs, truth, floors, strict=False):
        err = (a.double() - t).norm() / t.norm()
        assert err <= 2 * (e.double() - t).norm() / t.norm() + floor


# ---------------------------------------------------------------- Triton (interpreted) vs the reference


def _assert_same_math(a, e):
    """Triton vs reference on identical inputs: the fp32 math is the same up to summation order; outputs in a
    16-bit dtype may differ by the final rounding (the interpreter truncates fp32 -> bf16, torch and GPUs round to
    nearest), so: within 2 units in the last place of the output dtype plus fp32 summation noise."""
    assert a.dtype == e.dtype and a.shape == e.shape
    noise = 32 * torch.finfo(torch.float32).eps * max(e.abs().max().item() if e.numel() else 0.0, 1.0)
    ulp = torch.finfo(a.dtype).eps
    a, e = a.double(), e.double()
    assert ((a - e).abs() <= 2 * ulp * torch.maximum(a.abs(), e.abs()) + noise).all(), (a - e).abs().max()


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (5, 130), (7, 768), (1, 4097), (64, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, *LOW])
@pytest.mark.parametrize("variant", ["ln", "rms", "affine", "tiny", "nobias"])
def test_triton_kernels_match_reference(variant, dtype, shape, device):
    from approxbp.kernels import ms_norm as K

    def on(*tensors):  # the kernels run on ``device``; their results are compared on the CPU
        return [None if t is None else t.to(device) for t in tensors]

    def back(results):
        return [t.cpu() for t in results]

    m, n = shape
    x = (torch.randn(m, n) * 2 + 1).to(dtype)
    g = torch.randn(m, n).to(dtype)
    w, b = _params(variant, n, dtype)

    def empty(*size, dtype=torch.float32):  # outputs the op would allocate, on ``device``; the kernels write them
        return torch.full(size, math.nan, dtype=dtype, device=device)

    if variant in ("ln", "rms"):
        rms = variant == "rms"
        y, rstd = ops.ms_norm_forward_reference(x, EPS[variant], rms, dtype)
        out = [empty(m, n, dtype=dtype), empty(m)]
        assert K.ms_norm_fwd(*on(x), EPS[variant], rms, *out) is None
        for a, e in zip(back(out), (y, rstd), strict=True):
            _assert_same_math(a, e)
        dx = empty(m, n, dtype=dtype)
        assert K.ms_norm_bwd(*on(g, y, rstd), rms, dx) is None
        _assert_same_math(dx.cpu(), ops.ms_norm_backward_reference(g, y, rstd, rms, dtype))
        return
    w, b = w.detach(), b.detach() if b is not None else None
    idx = ops.guarded_features(w, b, dtype)
    assert (idx.numel() > 0) == (variant == "tiny")
    z, rstd, y_tiny = ops.ms_norm_affine_forward_reference(x, w, b, idx, EPS["ln"], dtype)
    out = [empty(m, n, dtype=dtype), empty(m), empty(m, idx.numel())]
    assert K.ms_norm_affine_fwd(*on(x, w, b, idx), EPS["ln"], *out) is None
    for a, e in zip(back(out), (z, rstd, y_tiny), strict=True):
        _assert_same_math(a, e)
    out = [empty(m, n, dtype=dtype), empty(n), empty(n)]
    assert K.ms_norm_affine_bwd(*on(g, z, w, b, rstd, idx, y_tiny), *out) is None
    for a, e in zip(back(out), ops.ms_norm_affine_backward_reference(g, z, w, b, rstd, idx, y_tiny, dtype),
                    strict=True):
        _assert_same_math(a, e)


def _strided_to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """``t`` on ``device`` with its strides, stride 0 included (its whole storage is copied)."""
    if t is None or t.device == device:
        return t
    flat = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage(), 0, (t.untyped_storage().nbytes() // t.itemsize,))
    return flat.to(device).as_strided(t.shape, t.stride(), t.storage_offset())


@pytest.mark.parametrize("variant", ["ln", "rms", "tiny", "nobias"])
def test_triton_autograd_matches_reference(variant, device):
    """Through the custom ops and autograd: 3-D non-contiguous x, a gradient with a zero row stride, a weight
    with stride 2."""
    x = (torch.randn(4, 9, 2) * 2).transpose(1, 2)
    g = torch.randn(1, 1, 9).expand(4, 2, 9)  # stride (0, 0, 1)
    w, b = _params(variant, 9)
    if w is not None:
        w = w.detach().repeat_interleave(2)[::2]
    ref = _run(_ms, variant, x, w, b, g)
    with use_backend("triton"):  # on ``device``, with the same strides
        got = [t.cpu() for t in _run(_ms, variant, *(_strided_to(t, device) for t in (x, w, b, g)))]
    for a, e in zip(got, ref, strict=True):
        _assert_same_math(a, e)


# ---------------------------------------------------------------- saved bytes and sharing

M, N, OUT = 6, 16, 8
SIZE = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
SETTINGS = [(torch.float32, None), (torch.float16, None), (torch.bfloat16, None),
            (torch.float32, torch.bfloat16), (torch.float32, torch.float16)]


def _baseline_module(op, dtype):
    if op == "rms":
        return nn.RMSNorm(N, eps=EPS["rms"], elementwise_affine=False, dtype=dtype)
    return nn.LayerNorm(N, elementwise_affine=op == "affine", dtype=dtype)


def _ms_module(op, dtype):
    return {"ln": MSLayerNorm(N), "rms": MSRMSNorm(N), "affine": MSLayerNormAffine(N, dtype=dtype)}[op]


def _expected_bytes(op, path, dtype, autocast, linear):
    """Bytes autograd saves (parameters excluded) for M x N inputs, as measured on torch 2.13 CPU.
    ours: y (or z) in the output dtype + rstd fp32 per row; a following linear saves that same y.
    torch: LayerNorm saves x + mean + rstd (in x's dtype for 16-bit x), RMSNorm saves x upcast to fp32 + rstd;
    a following linear saves its own input (under autocast a cast copy of the fp32 norm output)."""
    out = SIZE[autocast or dtype]
    if path == "ms":
        per_elem, per_row, linear_input = out, 4, 0
    elif op == "rms":
        per_elem, per_row, linear_input = 4, 4, out
    else:
        per_elem, per_row, linear_input = SIZE[dtype], 2 * SIZE[dtype], out
    weight_copy = OUT * N * SIZE[autocast] if autocast and linear else 0  # autocast's cast of the linear weight
    return (per_elem + linear * linear_input) * M * N + per_row * M + weight_copy


@pytest.mark.parametrize("linear", [False, True], ids=["alone", "linear"])
@pytest.mark.parametrize(("dtype", "autocast"), SETTINGS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("path", ["torch", "ms", "ms-triton"])
@pytest.mark.parametrize("op", ["ln", "rms", "affine"])
def test_saved_bytes_and_sharing(op, path, dtype, autocast, linear):
    """Exact saved bytes for the norm alone and norm -> stock nn.Linear, with and without autocast, against the
    baseline torch norm; with the MS norm the linear saves the norm's very output (one shared storage)."""
    norm = _baseline_module(op, dtype) if path == "torch" else _ms_module(op, dtype)
    lin = nn.Linear(N, OUT, dtype=dtype)
    x = torch.randn(M, N, dtype=dtype, requires_grad=True)
    with (use_backend("triton" if path == "ms-triton" else "torch"), record_saved(norm, lin) as saved,
          torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None)):
        y = norm(x)
        out = lin(y) if linear else y
    assert saved.bytes == _expected_bytes(op, "torch" if path == "torch" else "ms", dtype, autocast, linear)
    if path != "torch":
        assert y.dtype == (autocast or dtype)
        assert storage_key(y) in saved.storages
        assert saved.count == 2 + (autocast is not None and linear)  # y, rstd (and autocast's weight copy)
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("autocast", [None, torch.bfloat16, torch.float16])
def test_guard_costs_only_the_guarded_columns(autocast):
    """k guarded features add exactly rows * k * 4 bytes (their y in fp32) + k * 8 (their indices)."""
    norm = MSLayerNormAffine(N)
    with torch.no_grad():
        norm.weight[[1, 5, 6]] = torch.tensor([0.0, 1e-3, -1e-9])
        norm.bias[[5, 6]] = 0.5
        norm.weight[9] = 1e-6  # bias 0: recovered from z in fp32 and bf16, guarded in fp16 (below its tiny)
    k = 4 if autocast == torch.float16 else 3
    x = torch.randn(M, N, requires_grad=True)
    with record_saved(norm) as saved, torch.autocast("cpu", dtype=autocast or torch.bfloat16,
                                                     enabled=autocast is not None):
        norm(x)
    assert saved.bytes == _expected_bytes("affine", "ms", torch.float32, autocast, False) + M * k * 4 + k * 8


def test_guarded_features():
    w = torch.tensor([1.0, 0.0, 1e-6, 1e-30, -2.0, 0.1, 0.5, -0.5])
    b = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.5, -0.5])
    assert ops.guarded_features(w, b, torch.float32).tolist() == [1, 5]
    assert ops.guarded_features(w, b, torch.bfloat16).tolist() == [1, 5]
    assert ops.guarded_features(w, b, torch.float16).tolist() == [1, 2, 3, 5]
    assert ops.guarded_features(w, None, torch.float32).tolist() == [1]
    assert ops.guarded_features(w.half(), b.half(), torch.float32).tolist() == [1, 3, 5]  # 1e-30 is 0 in fp16


@pytest.mark.parametrize("autocast", [torch.bfloat16, torch.float16])
def test_recovered_y_error_bound(autocast):
    """Unguarded features at the edge of the guard (|beta| = 0.99 |gamma|, or tiny gamma without beta): under
    autocast dgamma_j = sum_rows g * y_rec is within u * sum_rows |g| (|y| + 2) (+ fp32 noise) of the truth, the
    bound of the module docstring; guarded features are exact to fp32."""
    n = 32
    w = torch.linspace(0.05, 2.0, n)
    b = 0.99 * w * torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    w[:4], b[:4] = torch.tensor([1e-4, 1e-20, 7e-5, 0.01]), 0.0  # 1e-20: below fp16's tiny (6.1e-5), guarded there
    w[4], b[4] = 0.01, 0.05  # guarded: |beta| > |gamma|
    assert ops.guarded_features(w, b, autocast).tolist() == ([1, 4] if autocast == torch.float16 else [4])
    x, g = torch.randn(64, n) * 2, torch.randn(64, n)
    w, b = w.requires_grad_(), b.requires_grad_()
    with torch.autocast("cpu", dtype=autocast):
        z = ops.ms_layer_norm_affine(x, w, b)
    assert z.dtype == autocast
    z.backward(g.to(autocast))
    y = F.layer_norm(x.double(), (n,))
    truth = (g.to(autocast).double() * y).sum(0)
    u = torch.finfo(autocast).eps / 2
    bound = u * (g.abs() * (y.abs() + 2)).sum(0) + 1e-5
    assert ((w.grad.double() - truth).abs() <= bound).all()
    assert (w.grad.double() - truth)[4].abs() < 1e-5  # saved y: exact whatever the dtype


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's numpy: the overflow
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # tested for, and inf - inf
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("variant", ["ln", "rms", "affine"])
def test_non_finite_and_overflowing_rows_are_nan(variant, backend):
    """A row with NaN or inf, and a row whose mean square overflows in fp32 (features ~1e20, finite), give a NaN
    output row, NaN input gradients and a NaN dgamma (dbeta = sum g stays finite), as torch's norms (before: y = 0
    and dx = 0 for the overflowing row); the other rows are untouched."""
    for dtype in (torch.float32, torch.bfloat16):  # fp16 inputs cannot overflow fp32 statistics
        x = torch.randn(5, 16).to(dtype)
        x[1] *= 1e20
        x[2, 3], x[3, 0] = math.nan, math.inf
        w, b = _params(variant, 16, dtype)
        g = torch.randn(5, 16).to(dtype)
        with use_backend(backend):
            y, dx, *dparams = _run(_ms, variant, x, w, b, g)
        assert y[1:4].isnan().all() and dx[1:4].isnan().all()
        assert all(d.isnan().all() for d in dparams[:1]) and all(d.isfinite().all() for d in dparams[1:])  # dbeta: g
        ok = torch.tensor([0, 4])
        with use_backend(backend):
            y_ok, dx_ok, *_ = _run(_ms, variant, x[ok], w, b, g[ok])
        torch.testing.assert_close(y[ok], y_ok)
        torch.testing.assert_close(dx[ok], dx_ok)


def test_affine_grads_exact_for_tiny_gamma():
    """Clamping |gamma| (the former guard) gets dgamma wrong where gamma is tiny; the saved columns do not."""
    x, g = torch.randn(50, 8), torch.randn(50, 8)
    w, b = torch.ones(8), torch.full((8,), 0.2)
    w[[2, 3]] = torch.tensor([0.0, 1e-8])
    ours, ref = _run(lambda _, *t: ops.ms_layer_norm_affine(*t), None, x, w, b, g), _run(_torch, "affine", x, w, b, g)
    for a, e in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert ref[2][2].abs() > 1  # dgamma of the zero gamma is far from 0


# ---------------------------------------------------------------- torch.compile, modules, dispatch, bad input


@pytest.mark.parametrize("autocast", [False, True])
def test_compile_fullgraph(autocast):
    """All three ops and a linear in one fullgraph trace (dynamic shapes; the guarded count is data-dependent).
    aot_eager: it traces exactly what inductor gets, while a CPU inductor build costs seconds per graph."""
    w, b = _params("tiny", 16)
    lin = nn.Linear(16, 4)

    def f(x):
        return lin(ops.ms_layer_norm_affine(ops.ms_rms_norm(ops.ms_layer_norm(x, 16), 16) * 2, w, b)).sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for rows in (3, 5):
        x = torch.randn(rows, 2, 16)
        results = []
        for fn in (compiled, f):
            leaves = [x.clone().requires_grad_(), w, b]
            w.grad = b.grad = None
            with torch.autocast("cpu", enabled=autocast):
                out = fn(leaves[0])
            out.backward()
            results.append([out.detach(), leaves[0].grad, w.grad.clone(), b.grad.clone()])
        for a, e in zip(*results, strict=True):
            torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_compile_inductor():
    norm = MSLayerNormAffine(16)
    with torch.no_grad():
        norm.weight[3] = 0.0
    compiled = torch.compile(norm, fullgraph=True)
    x = torch.randn(4, 16, requires_grad=True)
    compiled(x).square().sum().backward()
    gx, gw = x.grad, norm.weight.grad
    x.grad = norm.weight.grad = None
    norm(x).square().sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, norm.weight.grad)


def test_modules_match_torch_and_copy_layer_norm():
    x = torch.randn(3, 5, 12, requires_grad=True)
    ln = nn.LayerNorm(12)
    with torch.no_grad():
        ln.weight.uniform_(-1, 1)
        ln.weight[0] = 0.0
        ln.bias.uniform_(-1, 1)
    ms = MSLayerNormAffine.from_layer_norm(ln)
    assert ms.normalized_shape == (12,) and ms.eps == ln.eps
    assert torch.equal(ms.weight, ln.weight) and torch.equal(ms.bias, ln.bias)
    assert ms.weight.data_ptr() != ln.weight.data_ptr()
    for a, e in [(ms, ln), (MSLayerNorm(12), nn.LayerNorm(12, elementwise_affine=False)),
                 (MSRMSNorm(12), nn.RMSNorm(12, eps=1e-6, elementwise_affine=False))]:
        ya, ye = a(x), e(x)
        torch.testing.assert_close(ya, ye)
        params = [x, *a.parameters()]
        grads = torch.autograd.grad(ya.square().sum(), params)
        for ga, ge in zip(grads, torch.autograd.grad(ye.square().sum(), [x, *e.parameters()]), strict=True):
            torch.testing.assert_close(ga, ge)
    no_bias = MSLayerNormAffine.from_layer_norm(nn.LayerNorm(12, bias=False))
    assert no_bias.bias is None and "bias=False" in repr(no_bias)
    with pytest.raises(ValueError, match="affine"):
        MSLayerNormAffine.from_layer_norm(nn.LayerNorm(12, elementwise_affine=False))


def test_exported_from_package():
    assert approxbp.MSLayerNorm is MSLayerNorm and approxbp.MSRMSNorm is MSRMSNorm
    assert approxbp.MSLayerNormAffine is MSLayerNormAffine
    assert approxbp.ms_layer_norm is ops.ms_layer_norm and approxbp.ms_rms_norm is ops.ms_rms_norm
    assert approxbp.ms_layer_norm_affine is ops.ms_layer_norm_affine


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_and_multidim(backend):
    with use_backend(backend):
        for variant in ("ln", "rms", "tiny"):
            w, b = _params(variant, 6)
            x = torch.randn(0, 3, 6, requires_grad=True)
            y = _ms(variant, x, w, b)
            y.sum().backward()
            assert y.shape == x.shape and x.grad.shape == x.shape
        x = torch.randn(2, 3, 4, 5, dtype=torch.float32)
        torch.testing.assert_close(ops.ms_layer_norm(x, (4, 5)), F.layer_norm(x, (4, 5)))


def test_too_wide_for_triton():
    """Above the kernels' MAX_BLOCK features: the forced Triton backend raises before launching; the default
    backend takes the reference (CPU tensors always, CUDA tensors by this same check)."""
    from approxbp.kernels.ms_norm import MAX_BLOCK

    x = torch.randn(2, MAX_BLOCK + 1)
    with use_backend("triton"), pytest.raises(ValueError, match=f"at most {MAX_BLOCK} features"):
        ops.ms_layer_norm(x, MAX_BLOCK + 1)
    with use_backend("triton"), pytest.raises(ValueError, match="float64"):
        ops.ms_rms_norm(x.double()[:, :8], 8)
    torch.testing.assert_close(ops.ms_layer_norm(x, MAX_BLOCK + 1), F.layer_norm(x, (MAX_BLOCK + 1,)))


def _bad(name, kwargs):
    return pytest.param(kwargs, id=name)


@pytest.mark.parametrize("case", [
    _bad("int-x", dict(x=torch.ones(2, 4, dtype=torch.int64), exc=TypeError, match="floating-point")),
    _bad("complex-x", dict(x=torch.ones(2, 4, dtype=torch.complex64), exc=TypeError, match="floating-point")),
    _bad("float8-x", dict(x=torch.ones(2, 4).to(torch.float8_e5m2), exc=TypeError, match="floating-point")),
    _bad("float8-weight", dict(affine=True, w=torch.ones(4).to(torch.float8_e4m3fn), exc=TypeError, match="weight")),
    _bad("not-tensor", dict(x=[[1.0] * 4], exc=TypeError, match="torch.Tensor")),
    _bad("wrong-shape", dict(shape=5, exc=ValueError, match="does not match")),
    _bad("too-many-dims", dict(shape=(3, 2, 4), exc=ValueError, match="does not match")),
    _bad("zero-dim", dict(shape=(0,), exc=ValueError, match="positive ints")),
    _bad("empty-shape", dict(shape=(), exc=ValueError, match="positive ints")),
    _bad("eps-zero", dict(eps=0.0, exc=ValueError, match="eps")),
    _bad("eps-negative", dict(eps=-1e-5, exc=ValueError, match="eps")),
    _bad("eps-nan", dict(eps=math.nan, exc=ValueError, match="eps")),
    _bad("eps-inf", dict(eps=math.inf, exc=ValueError, match="eps")),
    _bad("weight-int", dict(affine=True, w=torch.ones(4, dtype=torch.int32), exc=TypeError, match="weight")),
    _bad("weight-meta", dict(affine=True, w=torch.ones(4, device="meta"), exc=ValueError, match="meta")),
    _bad("bias-meta", dict(affine=True, b=torch.ones(4, device="meta"), exc=ValueError, match="bias is on meta")),
    _bad("weight-shape", dict(affine=True, w=torch.ones(5), exc=ValueError, match="trailing shape")),
    _bad("bias-shape", dict(affine=True, b=torch.ones(2, 4), exc=ValueError, match="bias has shape")),
    _bad("affine-complex-x", dict(affine=True, x=torch.ones(2, 4, dtype=torch.complex64), exc=TypeError,
                                  match="floating-point")),
    _bad("affine-eps", dict(affine=True, eps=0, exc=ValueError, match="eps")),
])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_input_raises_before_any_kernel(case, backend, monkeypatch):
    from approxbp.kernels import ms_norm as K

    def fail(*args, **kwargs):
        raise AssertionError("a kernel ran")

    for mod, names in ((K, ("_fwd", "_bwd")), (ops, ("ms_norm_forward_reference", "ms_norm_affine_forward_reference",
                                                     "guarded_features"))):
        for name in names:
            monkeypatch.setattr(mod, name, fail)
    x = case.get("x", torch.ones(2, 4))
    with use_backend(backend), pytest.raises(case["exc"], match=case["match"]):
        if case.get("affine"):
            ops.ms_layer_norm_affine(x, case.get("w", torch.ones(4)), case.get("b", torch.zeros(4)),
                                     case.get("eps", 1e-5))
        else:
            ops.ms_layer_norm(x, case.get("shape", 4), case.get("eps", 1e-5))


def test_from_layer_norm_keeps_frozen_parameters_frozen():
    ln = torch.nn.LayerNorm(8)
    ln.weight.requires_grad_(False)
    new = MSLayerNormAffine.from_layer_norm(ln)
    assert not new.weight.requires_grad and new.bias.requires_grad


@pytest.mark.parametrize("module", [lambda: MSLayerNorm(8), lambda: MSRMSNorm(8)])
def test_meta_tensors_give_shapes_and_dtypes(module):
    # (the affine norm's guarded-feature count is data-dependent: it runs under FakeTensorMode, not on meta)
    x = torch.empty(3, 8, device="meta", requires_grad=True)
    y = module()(x)
    assert y.device.type == "meta" and y.shape == x.shape and y.dtype == x.dtype
