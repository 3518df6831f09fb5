"""Forward-mode AD through every op: torch.func.jvp, torch.func.jacfwd and torch.autograd.forward_ad give the op's
value bit for bit and the tangent J t of the map the backward transposes (approxbp.ops.tangent): the step function
for Approx-BP, the exact Jacobian for the norms.  Before, the custom ops gave zero tangents (jvp) or none
(forward_ad) without a word."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

import approxbp
from approxbp.ops import ms_norm
from approxbp.ops.backend import use_backend
from approxbp.ops.step import step
from approxbp.tables import default_table

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch.func's import

W, B = torch.rand(6, dtype=torch.float64) + 0.5, torch.randn(6, dtype=torch.float64)
OPS = {  # name -> (function of its differentiable inputs, number of inputs)
    "regelu2": (approxbp.regelu2, 1),
    "resilu2": (approxbp.resilu2, 1),
    "quick_gelu_3bit": (lambda x: approxbp.approx_act(x, "quick_gelu", 3, "derivative"), 1),
    "swiglu": (approxbp.approx_swiglu, 2),
    "geglu_tanh": (lambda g, u: approxbp.approx_geglu(g, u, approximate="tanh"), 2),
    "ms_layer_norm": (lambda x: ms_norm.ms_layer_norm(x, 6), 1),
    "ms_rms_norm": (lambda x: ms_norm.ms_rms_norm(x, 6), 1),
    "ms_layer_norm_affine": (lambda x, w, b: ms_norm.ms_layer_norm_affine(x, w, b), 3),
}


def inputs(name, dtype=torch.float64):
    """(x,), (gate, up) or (x, weight, bias) of op ``name``."""
    x, up = (torch.randn(4, 6, dtype=torch.float64) * 2).to(dtype), torch.randn(4, 6, dtype=torch.float64).to(dtype)
    return {1: (x,), 2: (x, up), 3: (x, W.to(dtype), B.to(dtype))}[OPS[name][1]]


def reverse_jacobian(fn, args):
    """The Jacobian from the ops' backward (reverse mode), one block per input, flattened."""
    blocks = torch.autograd.functional.jacobian(fn, args)
    return torch.cat([b.reshape(24, -1) for b in blocks], 1)


@pytest.mark.parametrize("name", list(OPS))
def test_jvp_jacfwd_and_forward_ad_give_the_backwards_linear_map(name):
    fn, _ = OPS[name]
    args = inputs(name)
    tangents = tuple(torch.randn_like(a) for a in args)
    value, jt = torch.func.jvp(fn, args, tangents)
    assert torch.equal(value, fn(*args))
    jacobian = reverse_jacobian(fn, args)
    expected = jacobian @ torch.cat([t.reshape(-1) for t in tangents])
    torch.testing.assert_close(jt.reshape(-1), expected, rtol=1e-12, atol=1e-12)
    assert jt.abs().max() > 0.1
    forward = torch.func.jacfwd(fn, argnums=tuple(range(len(args))))(*args)
    torch.testing.assert_close(torch.cat([b.reshape(24, -1) for b in forward], 1), jacobian, rtol=1e-12, atol=1e-12)
    with fwAD.dual_level():
        out = fn(*(fwAD.make_dual(a, t) for a, t in zip(args, tangents, strict=True)))
        primal, tangent = fwAD.unpack_dual(out)
        assert torch.equal(primal, value) and torch.equal(tangent, jt)


def test_activation_tangent_is_the_step_and_norm_tangents_are_exact():
    """Approx-BP: h~'(x) t (not h'(x) t), the map its backward transposes; the norms: torch's own exact JVP."""
    x, t = torch.randn(4, 6, dtype=torch.float64) * 2, torch.randn(4, 6, dtype=torch.float64)
    assert torch.equal(torch.func.jvp(approxbp.regelu2, (x,), (t,))[1], step(x, default_table("gelu", 2)) * t)
    for ours, theirs in ((lambda v: ms_norm.ms_layer_norm(v, 6), lambda v: F.layer_norm(v, (6,))),
                         (lambda v: ms_norm.ms_rms_norm(v, 6), lambda v: F.rms_norm(v, (6,), eps=1e-6)),
                         (lambda v: ms_norm.ms_layer_norm_affine(v, W, B), lambda v: F.layer_norm(v, (6,), W, B))):
        torch.testing.assert_close(torch.func.jvp(ours, (x,), (t,))[1], torch.func.jvp(theirs, (x,), (t,))[1],
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["regelu2", "swiglu", "ms_layer_norm", "ms_layer_norm_affine"])
def test_triton_and_low_precision(name, device):
    """The value is the Triton op's bit for bit, the tangent that of fp64 to the dtype's rounding; -0.0 stays -0.0."""
    fn, _ = OPS[name]
    for dtype in (torch.float32, torch.bfloat16):
        args = inputs(name, dtype)
        tangents = tuple(torch.randn_like(a) for a in args)
        with use_backend("triton"):  # on ``device``
            on = tuple(a.to(device) for a in args)
            value, jt = torch.func.jvp(fn, on, tuple(t.to(device) for t in tangents))
            assert torch.equal(value, fn(*on))
        jt = jt.cpu()
        exact = torch.func.jvp(fn, tuple(a.double() for a in args), tuple(t.double() for t in tangents))[1]
        torch.testing.assert_close(jt.double(), exact, rtol=2e-2, atol=2e-2 * exact.abs().max().item())
    zero = torch.tensor([-0.0, 0.0])
    assert torch.equal(torch.func.jvp(approxbp.regelu2, (zero,), (torch.ones(2),))[0].signbit(), zero.signbit())
