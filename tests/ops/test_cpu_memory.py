"""Peak extra memory of the CPU reference ops: what they return plus a scratch of a few blocks, whatever the size.

Counted exactly by a TorchDispatchMode that sees every aten op the (pure-PyTorch) reference runs and follows the
storages their outputs own: a storage counts from the op that creates it until the last tensor on it dies; the
inputs' storages never count.  The reference functions are called directly: through the custom op the mode would see
one opaque call.  The bound is the outputs' bytes plus SCRATCH_BYTES (32 bytes per element of one block), measured at
16 blocks (of BLOCK elements here, to stay fast: the code is the same at any block size), where the old reference (fp32
copies of the whole input, int64 codes) kept 4 to 9 times its output.
"""

import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from approxbp.ops import approx_act as act
from approxbp.ops import backend, gated, ms_norm
from approxbp.tables import default_table

BLOCK = 1 << 14
SCRATCH_BYTES = 32 * BLOCK
N = 16 * BLOCK
WIDTH = 1024


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    monkeypatch.setattr(backend, "BLOCK_ELEMENTS", BLOCK)


class PeakBytes(TorchDispatchMode):
    """Peak bytes of the storages created under the mode and still referenced (``peak``), ignoring ``inputs``'."""

    def __init__(self, *inputs):
        super().__init__()
        self.refs: dict[int, list] = {ptr: [None, 0] for ptr in (t.untyped_storage().data_ptr() for t in inputs)}
        self.live = self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.refs[ptr]
        entry[1] -= 1
        if entry[1] == 0 and entry[0] is not None:
            self.live -= entry[0]
            del self.refs[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().nbytes() == 0:
                continue
            ptr = t.untyped_storage().data_ptr()
            entry = self.refs.setdefault(ptr, [t.untyped_storage().nbytes(), 0])
            if entry[1] == 0 and entry[0] is not None:
                self.live += entry[0]
                self.peak = max(self.peak, self.live)
            entry[1] += 1
            weakref.finalize(t, self._release, ptr)
        return out


def peak_extra(fn, *inputs):
    """(peak extra bytes of fn(*inputs), bytes of its outputs)."""
    with PeakBytes(*inputs) as mode:
        out = fn(*inputs)
    return mode.peak, sum(t.untyped_storage().nbytes() for t in tree_leaves(out) if isinstance(t, torch.Tensor))


def assert_lean(fn, *inputs):
    peak, out_bytes = peak_extra(fn, *inputs)
    assert peak <= out_bytes + SCRATCH_BYTES, f"peak extra {peak / 2**20:.1f} MiB for {out_bytes / 2**20:.1f} MiB out"


def test_the_counter_sees_outputs_and_temporaries():
    """torch's GELU keeps exactly its output; an fp32 round trip keeps its two fp32 temporaries at once."""
    x = torch.randn(N, dtype=torch.float16)
    assert peak_extra(F.gelu, x) == (2 * N, 2 * N)
    assert peak_extra(lambda v: (v.float() * 2).half(), x) == (8 * N, 2 * N)
    with pytest.raises(AssertionError, match="peak extra"):
        assert_lean(lambda v: F.gelu(v.float()).half(), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_approx_act(dtype, bits):
    table = default_table("gelu", bits)
    pack_bits = act.PACK_BITS[bits]
    x = torch.randn(N, dtype=dtype)
    assert_lean(lambda v: act.approx_act_forward_reference(v, table, "gelu", pack_bits), x)
    _, packed = act.approx_act_forward_reference(x, table, "gelu", pack_bits)
    saved = act.table_on(table, x.device)
    assert_lean(lambda dy, p: act.approx_act_backward_reference(dy, p, saved, pack_bits), torch.randn_like(x), packed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gated(dtype):
    gate, up, dy = (torch.randn(N, dtype=dtype) for _ in range(3))
    assert_lean(lambda g, u: gated.gated_forward_reference(g, u, "silu"), gate, up)
    table = default_table("silu", 2)
    assert_lean(lambda d, g, u: gated.gated_backward_reference(d, g, u, table, "silu"), dy, gate, up)


@pytest.mark.parametrize(("dtype", "out_dtype"), [(torch.float16, torch.float16), (torch.float32, torch.float32),
                                                  (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("rms", [False, True])
def test_norms(rms, dtype, out_dtype):
    x, g = (torch.randn(N // WIDTH, WIDTH, dtype=dtype) for _ in range(2))
    assert_lean(lambda v: ms_norm.ms_norm_forward_reference(v, 1e-5, rms, out_dtype), x)
    y, rstd = ms_norm.ms_norm_forward_reference(x, 1e-5, rms, out_dtype)
    assert_lean(lambda gy, yy, r: ms_norm.ms_norm_backward_reference(gy, yy, r, rms, dtype), g.to(out_dtype), y, rstd)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_affine_norm(dtype):
    x, g = (torch.randn(N // WIDTH, WIDTH, dtype=dtype) for _ in range(2))
    w, b = torch.rand(WIDTH, dtype=dtype) + 0.5, torch.rand(WIDTH, dtype=dtype) * 0.1
    w[:3] = 0  # three guarded features
    idx = ms_norm.guarded_features(w, b, dtype)
    assert idx.numel() == 3
    assert_lean(lambda v: ms_norm.ms_norm_affine_forward_reference(v, w, b, idx, 1e-5, dtype), x)
    z, rstd, y_tiny = ms_norm.ms_norm_affine_forward_reference(x, w, b, idx, 1e-5, dtype)
    assert_lean(lambda gz, zz: ms_norm.ms_norm_affine_backward_reference(gz, zz, w, b, rstd, idx, y_tiny, dtype), g, z)
