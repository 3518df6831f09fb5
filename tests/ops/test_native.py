"""The fused C loops (approxbp.ops.native) give the pure-PyTorch reference's numbers bit for bit (NaN compared as
NaN: torch's own bf16 NaN bits depend on the CPU), on every dtype, table width and size, split over threads or not;
without a compiler everything falls back to the reference."""

import itertools
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from approxbp.ops import native
from approxbp.ops.approx_act import PACK_BITS, approx_act, approx_act_forward_reference
from approxbp.ops.backend import use_backend
from approxbp.ops.packed_dropout import packed_dropout
from approxbp.ops.step import rounded_thresholds
from approxbp.tables import as_table

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler: the ops run their pure-PyTorch reference")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SIZES = (1, 7, 64, 65, 2048 + 3)
LARGE = native.PARALLEL_ELEMENTS + 77  # split over threads (test_large_calls_split_over_threads)


def exact(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def awkward(n, dtype, table):
    """Normal values, the thresholds themselves and their neighbours, +-0, +-inf, NaN and subnormals."""
    x = torch.randn(n, dtype=torch.float64) * 3
    special = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, -1e-40]
    for t in rounded_thresholds(table.thresholds, dtype):
        special += [t, torch.nextafter(torch.tensor(t), torch.tensor(-9.0)).item()]
    k = min(n, len(special))
    x[:k] = torch.tensor(special[:k], dtype=torch.float64)
    return x.to(dtype)


def test_the_loops_build_here():
    assert native.available()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", (1, 2, 3, 4))
def test_codes_and_step_are_the_references(bits, dtype):
    table = as_table(None, "gelu", bits, "primitive")
    for n in SIZES:
        for x in (awkward(n, dtype, table), torch.randn(n).to(dtype)):
            _, codes = approx_act_forward_reference(x, table, "gelu", PACK_BITS[bits])
            packed = torch.full_like(codes, 0xAB)
            finite = native.approx_codes(x, rounded_thresholds(table.thresholds, dtype), PACK_BITS[bits], packed)
            assert torch.equal(packed, codes), (n, bits, dtype)
            assert finite == bool(torch.isfinite(x).all())
            xr = x.clone().requires_grad_()
            dy = torch.randn(n).to(dtype)
            with use_backend("torch"):
                dx_ref, = torch.autograd.grad(approx_act(xr, "gelu", bits), xr, dy)
            with use_backend("native"):
                dx_nat, = torch.autograd.grad(approx_act(xr, "gelu", bits), xr, dy)
            exact(dx_nat, dx_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inplace", (False, True))
def test_dropout_is_torchs_draw_for_draw(dtype, inplace):
    for n in SIZES:
        x = torch.randn(n).to(dtype)
        x[0] = float("nan")
        dy = torch.randn(n).to(dtype)
        results = []
        for backend in ("torch", "native"):
            torch.manual_seed(3)
            xr = x.clone().requires_grad_()
            with use_backend(backend):
                y = packed_dropout(xr * 1, 0.3, True, inplace)
                (dx,) = torch.autograd.grad(y, xr, dy)
            results.append((y.detach(), dx))
        torch.manual_seed(3)
        xr = x.clone().requires_grad_()
        y_torch = F.dropout(xr * 1, 0.3, True)
        (dx_torch,) = torch.autograd.grad(y_torch, xr, dy)
        for y, dx in results:
            exact(y, y_torch.detach())
            exact(dx, dx_torch)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_calls_split_over_threads(dtype, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert len(native._ranges(LARGE)) == 3
    table = as_table(None, "gelu", 2, "primitive")
    x = awkward(LARGE, dtype, table)
    _, codes = approx_act_forward_reference(x, table, "gelu", 2)
    packed = torch.empty_like(codes)
    assert not native.approx_codes(x, rounded_thresholds(table.thresholds, dtype), 2, packed)
    assert torch.equal(packed, codes)
    dy = torch.randn(LARGE).to(dtype)
    for backend in ("torch", "native"):
        xr = x.clone().requires_grad_()
        with use_backend(backend):
            grads = torch.autograd.grad(approx_act(xr, "gelu", 2), xr, dy)
        if backend == "torch":
            expected = grads
    exact(grads[0], expected[0])
    dx = torch.empty_like(dy)
    native.dropout_backward(dy, packed, 2.0, dx)  # the codes as 1-bit masks: any bytes will do
    with use_backend("torch"):
        from approxbp.ops.packed_dropout import apply_keep, unpack_bits

        exact(dx, apply_keep(dy, unpack_bits(packed, dy.shape), 0.5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_tensors(dtype):
    from approxbp.ops.gated import approx_swiglu

    x = torch.empty(0, 5, dtype=dtype, requires_grad=True)
    with use_backend("native"):
        for y in (approx_act(x), approx_swiglu(x, x), packed_dropout(x, 0.1)):
            assert y.shape == (0, 5)
            (dx,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
            assert dx is None or dx.shape == (0, 5)
    assert native.approx_codes(x.detach().reshape(-1), [0.0], 1, torch.empty(0, dtype=torch.uint8))


def test_ranges_cover_in_whole_bytes(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert native._ranges(0) == []
    for n in (1, 63, native.PARALLEL_ELEMENTS - 1, native.PARALLEL_ELEMENTS + 5, 10 ** 6):
        ranges = native._ranges(n)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(b % 64 == 0 and e > b for b, e in ranges)
        assert all(e == b2 for (_, e), (b2, _) in itertools.pairwise(ranges))
        assert len(ranges) == (3 if n >= native.PARALLEL_ELEMENTS else 1)


def test_without_a_compiler_the_reference_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("APPROXBP_CACHE", str(tmp_path))
    native.library.cache_clear()
    try:
        assert not native.available()
        x = torch.randn(100, requires_grad=True)
        with use_backend("torch"):
            expected = torch.autograd.grad(approx_act(x), x, torch.ones(100))
        exact(torch.autograd.grad(approx_act(x), x, torch.ones(100))[0], expected[0])
        with pytest.raises(ValueError, match="C loops are not built"), use_backend("native"):
            approx_act(x)
    finally:
        native.library.cache_clear()


def test_a_build_is_cached_by_source_compiler_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("APPROXBP_CACHE", str(tmp_path))
    native.library.cache_clear()
    try:
        assert native.available()
        built = list(tmp_path.glob("cpu_ops-*.so"))
        assert len(built) == 1 and not list(tmp_path.glob("tmp*"))  # written atomically, scratch removed
        native.library.cache_clear()
        assert native.available() and list(tmp_path.glob("cpu_ops-*.so")) == built
    finally:
        native.library.cache_clear()


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("APPROXBP_NATIVE", "0")
    native.library.cache_clear()
    try:
        assert not native.available()
    finally:
        native.library.cache_clear()



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", (1, 2, 4))
def test_gated_backward_is_the_references(bits, dtype):
    from approxbp.ops.gated import approx_swiglu

    table = as_table(None, "silu", bits, "primitive")
    for n in (5, 2048 + 3):
        gate, up = awkward(n, dtype, table), torch.randn(n).to(dtype)
        dy = torch.randn(n).to(dtype)
        grads = []
        for backend in ("torch", "native"):
            g, u = gate.clone().requires_grad_(), up.clone().requires_grad_()
            with use_backend(backend):
                grads.append(torch.autograd.grad(approx_swiglu(g, u, table), (g, u), dy))
        for a, b in zip(*grads, strict=True):
            exact(a, b)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_its_own_thread_pool():
    parent = native._pool(2)
    assert parent.submit(lambda: 7).result(timeout=30) == 7  # the parent's workers exist
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads are gone; a cached pool would hang here
        try:
            fresh = native._pool(2)
            ok = fresh is not parent and fresh.submit(lambda: 7).result(timeout=30) == 7
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
