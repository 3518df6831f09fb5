"""Fused gated activations (SwiGLU, GeGLU): Triton (interpreted on CPU) vs the pure-PyTorch reference, the step
backward of the gate, its error bound, saved bytes against the unfused baseline, bad input, torch.compile, modules.

Rule where the math differs (the kernels' erf/exp are not torch's), for out and d_up, which depend on h(gate):
max |z - z_64| over a tensor (z_64 the same product with h in float64) is no worse than twice that of the reference in
that dtype plus one unit in the last place of the largest |z_64|.  d_gate does not involve h: identical.  And with
h from the Triton activation kernel (the same math), out and d_up equal the unfused composition bit for bit."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ulp_rule import assert_within_ulp

import approxbp
from approxbp.fit import fit
from approxbp.fit.result import sup_error
from approxbp.ops import approx_act as act_ops
from approxbp.ops import gated as ops
from approxbp.ops.backend import use_backend
from approxbp.ops.step import step
from approxbp.saved import record_saved
from approxbp.tables import Table, default_table
from approxbp.targets import get_target

pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),  # interpreter's exp(-x)
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]  # -inf * 0, as torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
OPS = {  # name -> (op, target, unfused baseline)
    "swiglu": (approxbp.approx_swiglu, "silu", lambda g, u: F.silu(g) * u),
    "geglu": (approxbp.approx_geglu, "gelu", lambda g, u: F.gelu(g) * u),
    "geglu_tanh": (lambda g, u, **kw: approxbp.approx_geglu(g, u, approximate="tanh", **kw), "gelu_tanh",
                   lambda g, u: F.gelu(g, approximate="tanh") * u),
}
SHAPES = {"numel0": (0,), "empty3d": (3, 0, 2), "numel1": (1,), "numel3": (3,), "numel5": (5,), "numel4097": (4097,),
          "3d": (3, 5, 7), "4d": (2, 3, 5, 7)}
TABLE_BYTES = 8 * 7  # the default 2-bit table, fp64 [t.., L..]


def pair(case: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, up) of awkward shapes; "transposed" and "strided" are non-contiguous, "chunked" are halves of one
    projection output (views of one storage)."""
    def randn(*shape):
        return (torch.randn(*shape, dtype=torch.float64) * 3).to(dtype)

    if case == "transposed":
        return randn(33, 17).t(), randn(33, 17).t()
    if case == "strided":
        return randn(2003)[::2], randn(1002, 2)[:, 1]
    if case == "chunked":
        gate, up = randn(7, 2 * 13).chunk(2, -1)
        return gate, up
    return randn(*SHAPES[case]), randn(*SHAPES[case])


CASES = (*SHAPES, "transposed", "strided", "chunked")


def run(name: str, gate: torch.Tensor, up: torch.Tensor, backend: str, dy: torch.Tensor | None = None,
        device: str | torch.device = "cpu", **kwargs):
    """(out, d_gate, d_up, dy) of op ``name`` on ``backend``, computed on ``device``, returned on the CPU."""
    gate, up = (t.detach().to(device).clone().requires_grad_() for t in (gate, up))
    with use_backend(backend):
        out = OPS[name][0](gate, up, **kwargs)
        dy = torch.randn_like(out) if dy is None else dy.to(device)
        out.backward(dy)
    return out.detach().cpu(), gate.grad.cpu(), up.grad.cpu(), dy.cpu()


def assert_rule(z: torch.Tensor, z_ref: torch.Tensor, z_64: torch.Tensor) -> None:
    assert z.shape == z_ref.shape and z.dtype == z_ref.dtype
    if z.numel() == 0:
        return
    err, ref_err = (z.double() - z_64).abs().max(), (z_ref.double() - z_64).abs().max()
    ulp = torch.finfo(z.dtype).eps * z_64.abs().max()
    assert err <= 2 * ref_err + ulp, (err, ref_err, ulp)


def step_or_nan(gate, table):
    """step(gate), NaN where gate is not finite (torch's h'(gate) is NaN there)."""
    return step(gate, table).masked_fill(~gate.isfinite(), math.nan)


def expected_d_gate(gate, up, dy, table):
    """rnd(rnd(dy * up) * step(gate)): what the unfused approx_act(gate) * up computes (NaN at non-finite gates)."""
    wide = step(gate, table).dtype
    return ((dy.to(wide) * up.to(wide)).to(dy.dtype).to(wide) * step_or_nan(gate, table)).to(dy.dtype)


# ---------------------------------------------------------------- Triton (interpreted) vs reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", list(OPS))
def test_triton_matches_reference(name, case, dtype, device):
    gate, up = pair(case, dtype)
    out_ref, dg_ref, du_ref, dy = run(name, gate, up, "torch")
    out_tr, dg_tr, du_tr, _ = run(name, gate, up, "triton", dy, device)
    h64 = act_ops.activation_reference(gate.double(), OPS[name][1])
    assert_rule(out_tr, out_ref, h64 * up.double())
    assert_rule(du_tr, du_ref, h64 * dy.double())
    assert dg_tr.shape == gate.shape and torch.equal(dg_tr, dg_ref)
    with use_backend("triton"):  # the same kernel math for h: the fused op is exactly the unfused composition
        a = approxbp.approx_act(gate.to(device), OPS[name][1]).float().cpu()
    torch.testing.assert_close(out_tr, (a * up.float()).to(dtype), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(du_tr, (dy.float() * a).to(dtype), rtol=0, atol=0, equal_nan=True)


# ---------------------------------------------------------------- backward of the gate from its step table


def _tables():
    gen = torch.Generator().manual_seed(2)
    for bits in range(1, 5):
        t = torch.sort(torch.randn(2**bits - 1, generator=gen, dtype=torch.float64) * 2).values
        yield bits, Table(t.tolist(), (torch.rand(2**bits, generator=gen, dtype=torch.float64) * 2 - 0.5).tolist())


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", list(OPS))
def test_backward_is_the_unfused_composition(name, backend):
    """d_gate = rnd(rnd(dy * up) * step(gate)) and d_up = rnd(dy * rnd(h(gate))) for the default table and custom
    tables of bits 1..4, at and around the thresholds; exact in fp64 (reference only).  +-inf and NaN gates get a NaN
    d_gate, exactly where torch's baseline has one."""
    target = OPS[name][1]
    tables = [(None, default_table(target, 2)), *((t, t) for _, t in _tables())]
    for dtype in (*DTYPES, torch.float64) if backend == "torch" else DTYPES:
        for table_arg, table in tables:
            t = torch.tensor(table.thresholds, dtype=torch.float64).to(dtype)
            gate = torch.cat([t, torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype)),
                              pair("numel5", dtype)[0], torch.tensor([math.inf, -math.inf, math.nan], dtype=dtype)])
            up = (torch.randn(gate.numel(), dtype=torch.float64) * 3).to(dtype)
            _, d_gate, d_up, dy = run(name, gate, up, backend, table=table_arg)
            torch.testing.assert_close(d_gate, expected_d_gate(gate, up, dy, table), rtol=0, atol=0, equal_nan=True)
            if backend == "torch":
                h = act_ops.activation_reference(gate, target)
                wide = torch.promote_types(dtype, torch.float32)
                torch.testing.assert_close(d_up, (dy.to(wide) * h.to(wide)).to(dtype), rtol=0, atol=0, equal_nan=True)
            if dtype == torch.float64:
                torch.testing.assert_close(d_gate, dy * up * step_or_nan(gate, table), rtol=0, atol=0, equal_nan=True)
    g, u = gate.detach().requires_grad_(), up.detach().requires_grad_()  # the last one: +-inf and NaN gates
    OPS[name][2](g, u).backward(dy)
    assert torch.equal(d_gate.isnan(), g.grad.isnan()) and d_gate[-3:].isnan().all()  # NaN where torch's is NaN


@pytest.mark.parametrize("dtype", (*DTYPES, torch.float64))
@pytest.mark.parametrize("name", list(OPS))
def test_reference_forward_is_the_unfused_baseline(name, dtype):
    """The baseline F.silu(gate) * up (F.gelu for GeGLU) rounds h(gate) to the dtype before the product; so does the
    op, with h(gate) computed by torch in fp32 (fp64 for fp64) and rounded once: out = rnd(a * up) bit for bit,
    a = rnd(h_wide(gate)), and a is within one ulp of torch's own op in the dtype (whose fp16/bf16 CPU loop need
    not round once from fp32; bit equality with it fails on an AVX-512 EPYC).  GELU(+inf) = +inf where torch's
    vectorised loop says NaN."""
    gate, up = pair("numel4097", dtype)
    wide = torch.promote_types(dtype, torch.float32)
    h = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda v: F.gelu(v, approximate="tanh")}[OPS[name][1]]
    a = h(gate.to(wide)).to(dtype)
    assert_within_ulp(a, h(gate))
    assert torch.equal(OPS[name][0](gate, up), (a.to(wide) * up.to(wide)).to(dtype))
    edge = torch.tensor([math.inf, -math.inf, math.nan, 0.0], dtype=dtype).repeat(4)
    out = OPS[name][0](edge, torch.ones_like(edge))
    assert (out[0::4] == math.inf).all() and out[1::4].isnan().all() and out[2::4].isnan().all()


@pytest.mark.parametrize("name", list(OPS))
def test_gate_gradient_within_sup_bound(name):
    """|d_gate - dy up h'(gate)| <= |dy up| sup|h' - h~'| elementwise (fp64), sup of the shipped table."""
    target = OPS[name][1]
    table = default_table(target, 2)
    sup = sup_error(get_target(target), np.array(table.thresholds), np.array(table.levels))
    gate = torch.cat([torch.linspace(-12, 12, 24001, dtype=torch.float64), torch.tensor(table.thresholds).double()])
    up = torch.randn_like(gate)
    _, d_gate, _, dy = run(name, gate, up, "torch")
    exact = dy * up * torch.from_numpy(get_target(target).df(gate.numpy()))
    assert ((d_gate - exact).abs() <= (dy * up).abs() * sup * (1 + 1e-12)).all()
    assert ((d_gate - exact).abs() / (dy * up).abs()).max() >= 0.99 * sup


def test_fit_result_table():
    result = fit("silu", 2, "derivative")
    gate, up = pair("numel4097", torch.float32)
    _, d_gate, _, dy = run("swiglu", gate, up, "torch", table=result)
    assert torch.equal(d_gate, expected_d_gate(gate, up, dy, Table.from_fit(result)))
    with pytest.raises(ValueError, match="fitted to 'silu' but the activation is 'gelu'"):
        approxbp.approx_geglu(gate, up, table=result)


# ---------------------------------------------------------------- saved bytes


@pytest.mark.parametrize(("dtype", "backend"), [*((d, "torch") for d in (*DTYPES, torch.float64)),
                                                 *((d, "triton") for d in DTYPES)])
@pytest.mark.parametrize("name", list(OPS))
def test_saved_bytes_vs_baseline(name, dtype, backend):
    """Baseline h(gate) * up saves gate, h(gate), up (3 elements); ours gate and up (2) plus the shared table."""
    size = torch.tensor([], dtype=dtype).element_size()
    n = 4097
    gate, up = (t.requires_grad_() for t in pair("numel4097", dtype))
    with record_saved() as base:
        OPS[name][2](gate, up)
    assert base.count == 3 and base.bytes == 3 * n * size
    with use_backend(backend), record_saved() as ours:
        OPS[name][0](gate, up)
    assert ours.count == 3 and ours.bytes == 2 * n * size + TABLE_BYTES
    proj = (torch.randn(7, 26, dtype=torch.float64) * 3).to(dtype).requires_grad_()
    with use_backend(backend), record_saved() as chunked:
        OPS[name][0](*proj.chunk(2, -1))
    assert chunked.count == 2 and chunked.bytes == 7 * 26 * size + TABLE_BYTES  # both halves: one storage


# ---------------------------------------------------------------- bad input


@pytest.fixture
def no_kernel(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the op ran before the input was validated")

    monkeypatch.setattr(ops, "_gated_fwd", boom)


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn])
def test_rejects_non_float_tensors(no_kernel, dtype):
    bad, good = torch.zeros(4, dtype=dtype), torch.zeros(4)
    with pytest.raises(TypeError, match=f"gate must be a floating-point tensor.*{dtype}"):
        approxbp.approx_swiglu(bad, good)
    with pytest.raises(TypeError, match=f"up must be a floating-point tensor.*{dtype}"):
        approxbp.approx_geglu(good, bad)


@pytest.mark.parametrize(("gate", "up", "error", "match"), [
    (torch.zeros(4, 3), torch.zeros(3, 4), ValueError, r"same shape, got \(4, 3\) and \(3, 4\)"),
    (torch.zeros(4, 3), torch.zeros(3), ValueError, "same shape"),
    (torch.zeros(4), torch.zeros(4, dtype=torch.float16), TypeError, "same dtype, got torch.float32 and torch.float16"),
    (torch.zeros(4), torch.zeros(4, device="meta"), ValueError, "gate is on cpu but up is on meta"),
    ([0.0], torch.zeros(1), TypeError, r"gate must be a torch\.Tensor"),
])
def test_rejects_mismatched_pairs(no_kernel, gate, up, error, match):
    with pytest.raises(error, match=match):
        approxbp.approx_swiglu(gate, up)


def test_rejects_bad_arguments(no_kernel):
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="approximate must be one of"):
        approxbp.approx_geglu(x, x, approximate="erf")
    with pytest.raises(TypeError, match="table must be a Table"):
        approxbp.approx_swiglu(x, x, table=0.5)
    with pytest.raises(ValueError, match="strictly increasing"):
        approxbp.approx_swiglu(x, x, table=((1.0, 0.0, 2.0), (0.0, 1.0, 2.0, 3.0)))
    with pytest.raises(ValueError, match="approximate must be one of"):
        approxbp.ApproxGeGLU("erf")


def test_forced_triton_rejects_float64():
    x = torch.zeros(4, dtype=torch.float64)
    with use_backend("triton"), pytest.raises(ValueError, match="Triton gated activation takes"):
        approxbp.approx_swiglu(x, x)


# ---------------------------------------------------------------- torch.compile


def test_torch_compile_fullgraph():
    """A LLaMA-style MLP with the fused SwiGLU and a GeGLU on one split projection trace without graph breaks and
    give the eager gradients.  backend="aot_eager": the same tracing, fake implementations and autograd as inductor,
    without its C++ code generation (20-30 s cold on a 2-core CPU runner)."""
    torch._dynamo.reset()
    gate_proj, up_proj, proj = torch.nn.Linear(6, 8), torch.nn.Linear(6, 8), torch.nn.Linear(6, 16)
    swiglu, geglu = approxbp.ApproxSwiGLU(), approxbp.ApproxGeGLU("tanh")
    params = [*gate_proj.parameters(), *up_proj.parameters(), *proj.parameters()]

    def fn(x):
        return swiglu(gate_proj(x), up_proj(x)).sum() + geglu(proj(x)).square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 6)
    compiled(x).backward()
    got = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    fn(x).backward()
    for a, p in zip(got, params, strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- modules


def test_modules():
    gate, up = pair("3d", torch.float32)
    swiglu = approxbp.ApproxSwiGLU()
    assert repr(swiglu) == "ApproxSwiGLU(bits=2, objective='primitive')"
    assert repr(approxbp.ApproxGeGLU("tanh")) == "ApproxGeGLU(approximate='tanh', bits=2, objective='primitive')"
    assert swiglu.state_dict() == {}
    assert torch.equal(swiglu(gate, up), F.silu(gate) * up)
    fused = torch.cat([gate, up], -1)
    assert torch.equal(swiglu(fused), F.silu(gate) * up)  # one tensor: (gate, up) = x.chunk(2, -1)
    geglu = approxbp.ApproxGeGLU()
    assert torch.equal(geglu(gate, up), F.gelu(gate) * up)
    _, table = next(_tables())
    for layer in (swiglu, geglu):
        layer.set_table(table)
        g, u = gate.clone().requires_grad_(), up.clone().requires_grad_()
        layer(g, u).backward(dy := torch.randn_like(up))
        assert torch.equal(g.grad, expected_d_gate(gate, up, dy, table))
        assert "thresholds=(" in repr(layer)
        with pytest.raises(TypeError, match="set_table needs"):
            layer.set_table(None)
    with pytest.raises(ValueError, match="last dim, which must be even"):
        swiglu(torch.zeros(3, 5))
