"""PackedDropout: torch's dropout (same values, gradients and RNG draws) with a 1-bit saved mask."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from approxbp.modules.dropout import PackedDropout
from approxbp.ops.packed_dropout import pack_bits, packed_dropout, unpack_bits
from approxbp.saved import record_saved


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000])
def test_pack_round_trip(numel):
    mask = torch.rand(numel) < 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (numel + 7) // 8
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("inplace", [False, True])
def test_same_values_gradients_and_rng_as_torch(dtype, p, inplace, device):
    """On CPU and (``gpu`` mark) CUDA, where torch's dropout is the fused native_dropout kernel."""
    x0 = torch.randn(3, 5, 7, dtype=dtype, device=device)
    dy = torch.randn(3, 5, 7, dtype=dtype, device=device)
    results = []
    for dropout in (nn.Dropout(p, inplace), PackedDropout(p, inplace)):
        x = x0.clone().requires_grad_()
        torch.manual_seed(1)
        with record_saved() as saved:
            y = dropout(x * 1)  # an in-place dropout needs a non-leaf input
        y.backward(dy)
        results.append((y.detach(), x.grad, torch.rand(3, device=device), saved.bytes))
    (y0, g0, r0, bytes0), (y1, g1, r1, bytes1) = results
    assert torch.equal(y0, y1) and torch.equal(g0, g1) and torch.equal(r0, r1)
    assert bytes1 == (x0.numel() + 7) // 8 < bytes0


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_recomputes_the_same_mask(reentrant, device):
    """Under torch.utils.checkpoint the forward runs again in the backward with the RNG state restored: the same mask,
    so the gradient through sin (whose backward reads the recomputed dropped values) is the unchecked one."""
    x0 = torch.randn(4, 33, device=device)
    results = []
    for dropout in (nn.Dropout(0.3), PackedDropout(0.3)):
        for checkpointed in (False, True):
            x = x0.clone().requires_grad_()
            torch.manual_seed(2)
            y = checkpoint(lambda t, d=dropout: d(t * 2).sin(), x, use_reentrant=reentrant) if checkpointed \
                else dropout(x * 2).sin()
            y.sum().backward()
            results.append((y.detach(), x.grad, torch.rand(3, device=device)))
    for got in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got, results[0], strict=True))


def test_eval_p0_p1_and_attributes():
    x = torch.randn(4, 9)
    packed = PackedDropout.from_dropout(nn.Dropout(0.3, inplace=False))
    assert isinstance(packed, nn.Dropout) and packed.p == 0.3 and packed.inplace is False
    assert torch.equal(packed.eval()(x), x)
    assert torch.equal(packed_dropout(x, 0.0), x) and torch.equal(packed_dropout(x, 1.0), F.dropout(x, 1.0))
    with pytest.raises(ValueError, match="between 0 and 1"):
        packed_dropout(x, 1.5)
