"""The torch.func transforms through every op: grad, jacrev and vmap (per-sample gradients) give the ops' own
backward (approxbp.ops.tangent's composite form; torch's register_autograd wrapper refuses them,
pytorch/pytorch#170834), and vmap of an op gives its values bit for bit.  Before, each of these raised "must override
the setup_context staticmethod"."""

import pytest
import torch
from test_forward_ad import OPS, inputs, reverse_jacobian

import approxbp
from approxbp.ops import ms_norm
from approxbp.ops.backend import use_backend
from approxbp.ops.lora_delta import lora_delta
from approxbp.ops.packed_dropout import packed_dropout

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch.func's import

WEIGHTS = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


def weighted(fn):
    return lambda *args: (fn(*args) * WEIGHTS.to(args[0].dtype)).sum()


def autograd_grads(fn, args):
    leaves = [a.detach().clone().requires_grad_() for a in args]
    weighted(fn)(*leaves).backward()
    return [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("name", list(OPS))
def test_grad_and_jacrev_are_the_ops_backward(name):
    fn, count = OPS[name]
    args = inputs(name)
    argnums = tuple(range(count))
    for ours, theirs in zip(torch.func.grad(weighted(fn), argnums=argnums)(*args), autograd_grads(fn, args),
                            strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    jacobian = torch.func.jacrev(fn, argnums=argnums)(*args)
    torch.testing.assert_close(torch.cat([b.reshape(24, -1) for b in jacobian], 1), reverse_jacobian(fn, args),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(OPS))
def test_vmap_gives_per_sample_values_and_gradients(name, dtype):
    """A batch of 3 samples (the affine norm's weight and bias shared, as a model's parameters are): the values are
    the op's on the batch, the gradients each sample's own."""
    fn, count = OPS[name]
    samples = [inputs(name, dtype) for _ in range(3)]
    batched = count if count < 3 else 1
    stacked = [torch.stack([s[i] for s in samples]) for i in range(batched)] + list(samples[0][batched:])
    in_dims = (0,) * batched + (None,) * (count - batched)
    values = torch.func.vmap(fn, in_dims=in_dims)(*stacked)
    assert torch.equal(values, fn(*stacked))  # one call on the batch
    tolerance = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for value, sample in zip(values, samples, strict=True):  # torch's vectorised and scalar loops may round the
        torch.testing.assert_close(value, fn(*sample), **tolerance)  # last bit differently by position
    # every input's gradient per sample, the shared weight and bias's too (what per-sample gradients are for)
    per_sample = torch.func.vmap(torch.func.grad(weighted(fn), argnums=tuple(range(count))), in_dims=in_dims)(
        *stacked)
    for k, sample in enumerate(samples):
        for ours, theirs in zip(per_sample, autograd_grads(fn, sample), strict=True):
            torch.testing.assert_close(ours[k], theirs, **tolerance)


def test_vmap_refuses_a_batched_norm_weight():
    x, w, b = inputs("ms_layer_norm_affine")
    with pytest.raises(ValueError, match="weight and bias cannot be batched"):
        torch.func.vmap(ms_norm.ms_layer_norm_affine, in_dims=(None, 0, None))(x, torch.stack([w, w]), b)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_lora_delta_and_packed_dropout_under_grad(p):
    """The same dropout draws (same seed) and the same gradients as through the autograd Functions."""
    torch.manual_seed(0)
    x, a, b = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64), torch.randn(5, 3,
                                                                                                        dtype=torch.float64)
    gamma, beta = torch.rand(6, dtype=torch.float64) + 0.5, torch.randn(6, dtype=torch.float64)
    weights = torch.randn(4, 5, dtype=torch.float64)

    def loss(x, a, b):
        return (lora_delta(packed_dropout(x, 0.2), a, b, 2.0, p, True, gamma, beta) * weights).sum()

    torch.manual_seed(1)
    ours = torch.func.grad(loss, argnums=(0, 1, 2))(x, a, b)
    leaves = [t.clone().requires_grad_() for t in (x, a, b)]
    torch.manual_seed(1)
    loss(*leaves).backward()
    for g, leaf in zip(ours, leaves, strict=True):
        torch.testing.assert_close(g, leaf.grad, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="randomness"):  # torch's own rule for random ops under vmap
        torch.func.vmap(lambda v: packed_dropout(v, 0.2))(x)


def test_regelu2_gradient_under_grad_is_the_step_function():
    x = torch.randn(50, dtype=torch.float64) * 3
    assert torch.equal(torch.func.grad(lambda v: approxbp.regelu2(v).sum())(x),
                       approxbp.ops.step.step(x, approxbp.tables.default_table("gelu", 2)))


@pytest.mark.parametrize("name", ["regelu2", "swiglu", "ms_layer_norm", "ms_layer_norm_affine"])
def test_vmap_through_the_triton_kernels(name, device):
    """The batching rules hand the kernels the batch moved first (in_dims 1 here: a strided view); the per-sample
    gradients are the fp64 CPU reference's to fp32 rounding."""
    fn, count = OPS[name]
    samples = [tuple(a.float() for a in inputs(name)) for _ in range(2)]
    batched = count if count < 3 else 1
    stacked = [torch.stack([s[i] for s in samples], 1) for i in range(batched)] + list(samples[0][batched:])
    in_dims = (1,) * batched + (None,) * (count - batched)
    per_sample = torch.func.vmap(torch.func.grad(weighted(fn), argnums=tuple(range(batched))), in_dims=in_dims)
    with use_backend("triton"):
        ours = per_sample(*(t.to(device) for t in stacked))
        assert torch.equal(torch.func.vmap(fn, in_dims=in_dims)(*(t.to(device) for t in stacked)).cpu(),
                           fn(*(t.movedim(1, 0).to(device) if i < batched else t.to(device)
                                for i, t in enumerate(stacked))).cpu())
    for k, sample in enumerate(samples):
        for g, exact in zip(ours, autograd_grads(fn, tuple(a.double() for a in sample))[:batched], strict=True):
            torch.testing.assert_close(g[k].cpu().double(), exact, rtol=1e-5, atol=1e-5)
