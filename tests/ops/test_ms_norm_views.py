"""The public MS-norm ops return their output in x's shape and not as a view (FSDP2 warns about modules returning
views: an in-place op on one would skip its pre-backward hook), with the numbers of the same op on the rows x features
input, bit for bit, and an output the next linear layer saves as it is (one shared storage)."""

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

from approxbp.modules.ms_norm import MSLayerNormAffine
from approxbp.ops import ms_norm as ops
from approxbp.ops.backend import use_backend
from approxbp.saved import record_saved, storage_key

OPS = ("ln", "rms", "affine", "nobias")
SHAPES = {"3d": ((2, 5, 12), (12,)), "4d-two-dims": ((2, 3, 4, 6), (4, 6))}


def _op(name, x, normalized, w, b):
    if name == "ln":
        return ops.ms_layer_norm(x, normalized)
    if name == "rms":
        return ops.ms_rms_norm(x, normalized)
    return ops.ms_layer_norm_affine(x, w, None if name == "nobias" else b)


def _torch_op(name, x, normalized, w, b):
    if name == "rms":
        return F.rms_norm(x, normalized, eps=1e-6)
    return F.layer_norm(x, normalized, None if name == "ln" else w, b if name == "affine" else None, 1e-5)


def _inputs(shape, normalized, dtype):
    """x (non-contiguous: its first two dims swapped in memory), weight (some zeros: guarded features), bias."""
    x = (3 * torch.randn(shape[1], shape[0], *shape[2:]) + 1).to(dtype).transpose(0, 1)
    w = 0.5 + torch.rand(normalized)
    w.view(-1)[::5] = 0.0
    return x, w.to(dtype), torch.randn(normalized).to(dtype)


def _run(name, x, normalized, w, b, g):
    """(output, x.grad, weight.grad, bias.grad) of the op on leaf copies of the inputs."""
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = _op(name, x, normalized, w, b)
    y.backward(g)
    return y, x.grad, w.grad, b.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", OPS)
def test_output_is_no_view_and_matches_the_rows_by_features_op(name, backend, shape, dtype, device):
    """On ``device`` (cuda: both backends run the compiled kernels)."""
    shape, normalized = SHAPES[shape]
    x, w, b = (t.to(device) for t in _inputs(shape, normalized, dtype))
    g = torch.randn(shape).to(device, dtype)
    n = w.numel()
    with use_backend(backend):
        y, dx, dw, db = _run(name, x, normalized, w, b, g)
        flat = _run(name, x.reshape(-1, n), n, w.reshape(n), b.reshape(n), g.reshape(-1, n))
    assert not y._is_view() and y._base is None and y.shape == x.shape and y.is_contiguous()
    assert not dx._is_view() and dx.shape == x.shape
    assert torch.equal(y.detach(), flat[0].detach().view(shape))
    assert torch.equal(dx, flat[1].view(shape))
    if name in ("affine", "nobias"):
        assert dw.shape == w.shape and torch.equal(dw, flat[2].view(w.shape))
    if name == "affine":
        assert torch.equal(db, flat[3].view(b.shape))


@pytest.mark.parametrize("name", OPS)
def test_forward_ad_output_is_no_view(name):
    shape, normalized = SHAPES["4d-two-dims"]
    x, w, b = _inputs(shape, normalized, torch.float32)
    with fwAD.dual_level():
        y = _op(name, fwAD.make_dual(x, torch.randn(shape)), normalized, w, b)
        assert not y._is_view() and y.shape == x.shape


@pytest.mark.parametrize("name", OPS)
def test_in_place_op_on_the_output_raises_at_backward(name):
    """The MS norms save their output, so an in-place op on it must not give a silently wrong gradient: autograd's
    version check raises (torch's norms, which save x, give the gradient of the norm)."""
    shape, normalized = SHAPES["3d"]
    x, w, b = _inputs(shape, normalized, torch.float32)
    g = torch.randn(shape)
    x_ref, x_ms = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref = _torch_op(name, x_ref, normalized, w, b)
    y_ref.add_(1).backward(g)
    assert x_ref.grad is not None
    y = _op(name, x_ms, normalized, w, b)
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward(g)
    assert x_ms.grad is None


@pytest.mark.parametrize("name", OPS)
def test_next_linear_saves_the_output_itself(name):
    """Norm then nn.Linear on a 3-D input: the linear saves the norm's output storage, so autograd keeps the output
    and one fp32 rstd per row (no guarded feature here), nothing else."""
    shape, normalized = SHAPES["3d"]
    x = torch.randn(shape, requires_grad=True)
    w, b = torch.full(normalized, 1.5, requires_grad=True), torch.full(normalized, 0.25, requires_grad=True)
    lin = nn.Linear(normalized[-1], 7)
    with record_saved(lin, w, b) as saved:
        y = _op(name, x, normalized, w, b)
        out = lin(y)
    assert storage_key(y) in saved.storages
    assert saved.count == 2 and saved.bytes == y.numel() * 4 + x.numel() // normalized[-1] * 4
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_gradcheck_two_normalized_dims_without_bias():
    x = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    w = (0.5 + torch.rand(2, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, v: ops.ms_layer_norm_affine(t, v, None), (x, w))


class _PostLNBlock(nn.Module):
    """A post-LN block's tail: its output is the affine MS-LN's."""

    def __init__(self, n):
        super().__init__()
        self.dense, self.norm = nn.Linear(n, n), MSLayerNormAffine(n)

    def forward(self, x):
        return self.norm(x + self.dense(x))


def test_fsdp2_sees_no_view_and_trains_as_unwrapped():
    from torch.distributed.fsdp import fully_shard

    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        block = _PostLNBlock(8)
        reference = _PostLNBlock(8)
        reference.load_state_dict(block.state_dict())
        fully_shard(block)
        x = torch.randn(2, 3, 8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = block(x)
        assert not [w for w in caught if "returned a view tensor" in str(w.message)]
        out.square().sum().backward()
        reference(x).square().sum().backward()
        for (name, p), (_, q) in zip(block.named_parameters(), reference.named_parameters(), strict=True):
            torch.testing.assert_close(p.grad.full_tensor(), q.grad, msg=name)
    finally:
        torch.distributed.destroy_process_group()
