"""Approx-BP activations: Triton (interpreted on CPU) vs the pure-PyTorch reference, the step-function backward, its
error bound, saved bytes, bad input, int64 offsets and torch.compile.

Forward rule where the math differs (the kernels' erf/exp are not torch's): max |y - h(x)| over a tensor, h in
float64, is no worse than twice torch's own max error in that dtype plus one unit in the last place of the largest
|h(x)| (the slack for tensors on which torch happens to be exact).  Codes, packed bytes and gradients: identical."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from ulp_rule import assert_within_ulp, ulp_distance

import approxbp
from approxbp.fit import fit
from approxbp.fit.result import sup_error
from approxbp.kernels.approx_act import flat_offsets, packed_offsets
from approxbp.kernels.constants import TABLES
from approxbp.kernels.launch import on_device
from approxbp.ops import approx_act as ops
from approxbp.ops.backend import use_backend
from approxbp.ops.step import step, step_codes
from approxbp.saved import record_saved
from approxbp.tables import Table, default_table
from approxbp.targets import TARGET_NAMES, get_target

# numpy warnings of the interpreter: exp(-x) overflows to inf (sigmoid -> 0 as it should), -inf * 0 is NaN as in torch
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOW = (torch.float16, torch.bfloat16)
TABLE_BYTES = {bits: 8 * (2 ** (bits + 1) - 1) for bits in range(1, 5)}  # fp64 [t.., L..], saved once per table
TORCH_OPS = {"gelu": F.gelu, "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "silu": F.silu,
             "quick_gelu": lambda v: v * torch.sigmoid(1.702 * v)}  # QuickGELU: HF's formula (no torch op)


def make(case: str, dtype: torch.dtype) -> torch.Tensor:
    """Awkward inputs: sizes not divisible by any packing factor, empty, 1-D..4-D, non-contiguous."""
    def randn(*shape):
        return (torch.randn(*shape, dtype=torch.float64) * 3).to(dtype)

    return {
        "numel0": lambda: randn(0),
        "empty3d": lambda: randn(3, 0, 2),
        "numel1": lambda: randn(1),
        "numel3": lambda: randn(3),
        "numel5": lambda: randn(5),
        "numel4097": lambda: randn(4097),
        "2d": lambda: randn(17, 33),
        "3d": lambda: randn(3, 5, 7),
        "4d": lambda: randn(2, 3, 5, 7),
        "transposed": lambda: randn(33, 17).t(),
        "strided": lambda: randn(2003)[::2],
        "permuted4d": lambda: randn(3, 4, 5, 6).permute(2, 0, 3, 1),
    }[case]()


CASES = ("numel0", "empty3d", "numel1", "numel3", "numel5", "numel4097", "2d", "3d", "4d", "transposed", "strided",
         "permuted4d")


def specials(table: Table, dtype: torch.dtype) -> torch.Tensor:
    """Thresholds (rounded to dtype), their neighbours below and above in dtype, 0, +-inf and NaN."""
    t = torch.tensor(table.thresholds, dtype=torch.float64).to(dtype)
    below = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    above = torch.nextafter(t, torch.tensor(math.inf, dtype=dtype))
    edge = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan], dtype=dtype)
    return torch.cat([t, below, above, edge])


def run(x: torch.Tensor, backend: str, dy: torch.Tensor | None = None, device: str | torch.device = "cpu",
        **kwargs):
    """(y, dx, dy) of approx_act on ``backend``, computed on ``device``, returned on the CPU."""
    x = x.detach().to(device).clone().requires_grad_()
    with use_backend(backend):
        y = approxbp.approx_act(x, **kwargs)
        dy = torch.randn_like(y) if dy is None else dy.to(device)
        y.backward(dy)
    return y.detach().cpu(), x.grad.cpu(), dy.cpu()


def raw_forward(x: torch.Tensor, table: Table, target: str, backend: str, device: str | torch.device = "cpu"):
    """(y, packed codes) straight from the custom op, computed on ``device``, returned on the CPU."""
    x = x.to(device)
    with use_backend(backend):
        out = torch.ops.approxbp.approx_act_fwd(x, ops.table_on(table, x.device), target, ops.PACK_BITS[table.bits])
    return out[0].cpu(), out[1].cpu()


def assert_forward_rule(y: torch.Tensor, x: torch.Tensor, target: str) -> None:
    """The module docstring's rule, NaN where torch gives NaN."""
    exact = ops.activation_reference(x.double(), target)
    torch_y = ops.activation_reference(x, target)
    assert torch.equal(y.isnan(), exact.isnan()) and torch.equal(y.isnan(), torch_y.isnan())
    assert torch.equal(y[exact.isinf()].double(), exact[exact.isinf()])
    finite = exact.isfinite() & torch_y.isfinite()
    if not finite.any():
        return
    err = (y.double() - exact)[finite].abs().max()
    torch_err = (torch_y.double() - exact)[finite].abs().max()
    ulp = torch.finfo(x.dtype).eps * exact[finite].abs().max()
    assert err <= 2 * torch_err + ulp, (err, torch_err, ulp)


def expected_dx(x: torch.Tensor, dy: torch.Tensor, table: Table) -> torch.Tensor:
    """dy * step(x): one multiply in fp32 (fp64 for fp64), rounded to the dtype."""
    return (dy.to(step(x, table).dtype) * step(x, table)).to(dy.dtype)


# ---------------------------------------------------------------- Triton (interpreted) vs reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_reference_on_awkward_shapes(case, dtype, device):
    x = make(case, dtype)
    table = default_table("gelu", 2)
    y_tr, codes_tr = raw_forward(x, table, "gelu", "triton", device)
    y_ref, codes_ref = raw_forward(x, table, "gelu", "torch")
    assert codes_tr.dtype == torch.uint8 and codes_tr.shape == (math.ceil(x.numel() / 4),)
    assert torch.equal(codes_tr, codes_ref)
    assert torch.equal(ops.unpack_codes(codes_ref, x.numel(), 2), step_codes(x, table).reshape(-1))
    assert y_tr.shape == x.shape and y_tr.dtype == dtype
    assert_forward_rule(y_tr, x, "gelu")
    y, dx_ref, dy = run(x, "torch")
    _, dx_tr, _ = run(x, "triton", dy, device)
    assert torch.equal(y, y_ref)
    assert dx_tr.shape == x.shape and torch.equal(dx_tr, dx_ref)
    assert torch.equal(dx_ref, expected_dx(x, dy, table))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("target", TARGET_NAMES)
def test_triton_matches_reference_every_table(target, bits, dtype, device):
    table = default_table(target, bits, "derivative" if bits % 2 else "primitive")
    x = torch.cat([make("numel4097", dtype)[:1000], specials(table, dtype)])
    y_tr, codes_tr = raw_forward(x, table, target, "triton", device)
    _, codes_ref = raw_forward(x, table, target, "torch")
    assert codes_tr.numel() == math.ceil(x.numel() * ops.PACK_BITS[bits] / 8)
    assert torch.equal(codes_tr, codes_ref)
    assert_forward_rule(y_tr, x, target)
    finite = x[:-3]  # without +-inf and NaN, which make the whole dx NaN (test_non_finite_input_gives_a_nan_gradient)
    _, dx_ref, dy = run(finite, "torch", target=target, table=table)
    _, dx_tr, _ = run(finite, "triton", dy, device, target=target, table=table)
    assert torch.equal(dx_tr, dx_ref)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_non_contiguous_and_expanded_incoming_gradients(backend):
    """dy reaches the backward transposed (y.t() downstream) or expanded with stride 0 (y.sum())."""
    x = make("2d", torch.float32)
    table = default_table("gelu", 2)
    w = torch.randn(33, 17)
    for loss, dy in ((lambda y: (y.t() * w).sum(), w.t()), (lambda y: y.sum(), torch.ones(17, 33))):
        xr = x.clone().requires_grad_()
        with use_backend(backend):
            loss(approxbp.regelu2(xr)).backward()
        assert torch.equal(xr.grad, expected_dx(x, dy, table))


def test_packed_layout_is_little_end_first():
    """Element i sits in byte i // per at bit (i % per) * pack_bits; padding codes are 0."""
    table = Table((-1.0, 0.0, 1.0), (0.0, 0.25, 0.75, 1.0))
    x = torch.tensor([-2.0, -0.5, 0.5, 2.0, 2.0, -2.0, 0.0])  # codes 0 1 2 3 | 3 0 2 (pad 0)
    expected = torch.tensor([0b11_10_01_00, 0b00_10_00_11], dtype=torch.uint8)
    for backend in ("torch", "triton"):
        assert torch.equal(raw_forward(x, table, "gelu", backend)[1], expected)
    table4 = Table(tuple(float(v) for v in range(-7, 8)), tuple(v / 16 for v in range(16)))
    x4 = torch.tensor([-9.0, 7.5, -0.5])  # codes 0, 15, 7 -> bytes 0xF0, 0x07
    for backend in ("torch", "triton"):
        assert torch.equal(raw_forward(x4, table4, "gelu", backend)[1], torch.tensor([0xF0, 0x07], dtype=torch.uint8))


# ---------------------------------------------------------------- the step-function backward


def test_step_reference_agrees_with_searchsorted():
    """approxbp.ops.step (the shared reference) against an independent numpy evaluation of the table."""
    for target in TARGET_NAMES:
        for bits in range(1, 5):
            table = default_table(target, bits, "derivative")
            x = torch.cat([specials(table, torch.float64)[:-1], torch.linspace(-8, 8, 2001, dtype=torch.float64)])
            idx = np.searchsorted(np.array(table.thresholds), x.numpy(), side="right")
            assert torch.equal(step(x, table), torch.tensor(np.array(table.levels)[idx]))


def _custom_tables():
    gen = torch.Generator().manual_seed(1)
    for bits in range(1, 5):
        t = torch.sort(torch.randn(2**bits - 1, generator=gen, dtype=torch.float64) * 2).values
        yield Table(t.tolist(), (torch.rand(2**bits, generator=gen, dtype=torch.float64) * 2 - 0.5).tolist())


CUSTOM_TABLES = list(_custom_tables())


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("objective", ["primitive", "derivative", "custom"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("target", TARGET_NAMES)
def test_backward_is_dy_times_step(target, bits, objective, backend):
    table = CUSTOM_TABLES[bits - 1] if objective == "custom" else default_table(target, bits, objective)
    dtypes = (*DTYPES, torch.float64) if backend == "torch" else DTYPES
    for dtype in dtypes:
        x = torch.cat([make("numel3", dtype), specials(table, dtype)[:-3]])  # finite
        kwargs = {"table": table} if objective == "custom" else {"bits": bits, "objective": objective}
        _, dx, dy = run(x, backend, target=target, **kwargs)
        assert torch.equal(dx, expected_dx(x, dy, table))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_non_finite_input_gives_a_nan_gradient(backend):
    """torch's gradient is NaN at x = NaN, +inf, -inf; the op's whole dx is NaN for a call with any of them (the codes
    have no spare state, see approxbp.ops.approx_act), with the same saved bytes, and the next finite call with the
    same table is exact again."""
    for dtype in (*DTYPES, torch.float64) if backend == "torch" else DTYPES:
        finite = make("numel4097", dtype)[:1001]
        for target in ("gelu", "silu"):
            for bad in (math.nan, math.inf, -math.inf):
                x = finite.clone()
                x[500] = bad
                with record_saved() as saved:
                    _, dx, dy = run(x, backend, target=target)
                xr = x.clone().requires_grad_()
                TORCH_OPS[target](xr).backward(dy)
                assert xr.grad[500].isnan() and dx.isnan().all(), (dtype, target, bad)
                assert saved.bytes == math.ceil(1001 / 4) + TABLE_BYTES[2]
            _, dx, dy = run(finite, backend, target=target)
            assert torch.equal(dx, expected_dx(finite, dy, default_table(target, 2)))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_table_argument_forms(backend):
    """A FitResult, a Table and a (thresholds, levels) pair give the same gradient; their bits replace ``bits``."""
    result = fit("silu", 3, "derivative")
    x = make("numel4097", torch.float32)[:500]
    _, dx, dy = run(x, backend, target="silu", bits=1, table=result)
    assert torch.equal(dx, expected_dx(x, dy, Table.from_fit(result)))
    for form in (Table.from_fit(result), (result.thresholds, result.levels), [list(result.thresholds), result.levels]):
        assert torch.equal(run(x, backend, dy, target="silu", table=form)[1], dx)
    with record_saved() as saved:
        approxbp.approx_act(x.requires_grad_(), "silu", table=result)
    assert saved.bytes == math.ceil(500 * 4 / 8) + TABLE_BYTES[3]  # 3 bits pack as 4


def test_regelu2_resilu2_are_the_paper_tables():
    x = make("numel4097", torch.float32)[:300]
    for fn, target in ((approxbp.regelu2, "gelu"), (approxbp.resilu2, "silu")):
        xr = x.clone().requires_grad_()
        fn(xr).backward(dy := torch.randn_like(x))
        assert torch.equal(xr.grad, expected_dx(x, dy, Table(**{k: TABLES[f"{target}/2/primitive"][k]
                                                                 for k in ("thresholds", "levels")})))


def assert_reference_forward(y: torch.Tensor, x: torch.Tensor, torch_op) -> None:
    """The reference's documented forward rule: y is torch's op in fp32 (fp64 for fp64) rounded once to x's dtype,
    bit for bit, and so within one ulp of torch's op in x's own dtype, whatever loop torch picks on this CPU (its
    fp16/bf16 kernels need not compute in fp32 and round once).  GELU(+inf) = +inf where torch's vectorised loop
    says NaN, so infinite inputs are left to ``test_reference_forward_is_torchs_activation``."""
    wide = torch_op(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)
    assert y.dtype == x.dtype and torch.equal(y, wide)
    assert_within_ulp(y, torch_op(x))


@pytest.mark.parametrize("dtype", (*DTYPES, torch.float64))
def test_reference_forward_is_torchs_activation(dtype):
    """The rule of ``assert_reference_forward`` on every target (QuickGELU's fp16 formula would round three times,
    so only its fp32-then-round value is held to); +inf -> +inf, -inf -> -0 or 0, NaN -> NaN, 0 -> 0."""
    x = make("numel4097", dtype)
    for target in TARGET_NAMES:
        y = approxbp.approx_act(x, target)
        if target == "quick_gelu":
            xf = x.to(torch.promote_types(dtype, torch.float32))
            assert torch.equal(y, TORCH_OPS[target](xf).to(dtype))
        else:
            assert_reference_forward(y, x, TORCH_OPS[target])
    edge = torch.tensor([math.inf, -math.inf, math.nan, 0.0], dtype=dtype).repeat(4)  # 16: vectorised loop
    for target in TARGET_NAMES:
        out = approxbp.approx_act(edge, target)
        assert (out[0::4] == math.inf).all() and out[1::4].isnan().all() and out[2::4].isnan().all()
        assert (out[3::4] == 0).all()


def _nudge(op, every: int, ulps: int):
    """``op`` with every ``every``-th fp16/bf16 output moved ``ulps`` representable values up: a CPU whose
    low-precision kernel does not round once from fp32 (AVX-512 EPYC: 257 of 4097 fp16 GELU values one ulp off)."""
    def nudged(v):
        out = op(v).clone()
        if out.dtype in LOW:
            for _ in range(ulps):
                out[::every] = torch.nextafter(out[::every], torch.full_like(out[::every], math.inf))
        return out

    return nudged


@pytest.mark.parametrize("dtype", LOW)
def test_reference_forward_rule_allows_one_ulp_of_cpu_dependence(dtype):
    """The rule holds against a torch whose fp16/bf16 GELU is one ulp off in 1 value in 16, as on that EPYC (bit
    equality with torch's op failed there), and still catches two ulps."""
    x = make("numel4097", dtype)
    y = approxbp.approx_act(x, "gelu")
    assert_reference_forward(y, x, _nudge(F.gelu, 16, 1))
    assert not torch.equal(y, _nudge(F.gelu, 16, 1)(x))
    with pytest.raises(AssertionError, match="more than 1 ulp apart"):
        assert_reference_forward(y, x, _nudge(F.gelu, 16, 2))


def test_ulp_distance_counts_representable_values():
    """Across a power of two and across +-0 one step is one ulp; NaN and inf must sit where expected."""
    for dtype in (*DTYPES, torch.float64):
        one = torch.tensor([1.0, 0.0, -0.0, 1e-3], dtype=dtype)
        up = torch.nextafter(one, torch.full_like(one, math.inf))
        down = torch.nextafter(one, torch.full_like(one, -math.inf))
        assert ulp_distance(up, down).tolist() == [2, 2, 2, 2]
        assert ulp_distance(torch.tensor([0.0], dtype=dtype), torch.tensor([-0.0], dtype=dtype)).item() == 0
        assert_within_ulp(up, one)
        with pytest.raises(AssertionError, match="more than 1 ulp"):
            assert_within_ulp(up, down)
        with pytest.raises(AssertionError, match="NaN"):
            assert_within_ulp(torch.tensor([math.nan, 1.0], dtype=dtype), torch.tensor([1.0, 1.0], dtype=dtype))
        with pytest.raises(AssertionError, match="inf"):
            assert_within_ulp(torch.tensor([torch.finfo(dtype).max], dtype=dtype),
                              torch.tensor([math.inf], dtype=dtype))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_zero_takes_the_level_right_of_the_middle(backend):
    """Symmetric shipped tables have a middle threshold of exactly 0, so x = +-0 gets L_{2^(bits-1)}: ReGELU2 1.0496
    and ReSiLU2 1.0405 (with middle thresholds of +1.1e-16 and -3.8e-16 ReGELU2 took -0.0496 and ReSiLU2 1.0405)."""
    x = torch.tensor([0.0, -0.0])
    for key, entry in TABLES.items():
        target, bits, objective = key.split("/")
        if entry["thresholds"][len(entry["thresholds"]) // 2] != 0.0 or (backend == "triton" and bits != "2"):
            continue
        middle_right = entry["levels"][len(entry["levels"]) // 2]
        for dtype in DTYPES:
            _, dx, _ = run(x.to(dtype), backend, torch.ones(2, dtype=dtype), target=target, bits=int(bits),
                           objective=objective)
            assert torch.equal(dx, torch.full((2,), middle_right).to(dtype)), (key, dtype, dx)
    for op, level in ((approxbp.regelu2, 1.0495752056523273), (approxbp.resilu2, 1.0405242940549306)):
        xr = x.clone().requires_grad_()
        with use_backend(backend):
            op(xr).sum().backward()
        torch.testing.assert_close(xr.grad, torch.full((2,), level), rtol=0, atol=1e-7)


@pytest.mark.parametrize("objective", ["primitive", "derivative", "fit"])
@pytest.mark.parametrize("target", TARGET_NAMES)
def test_gradient_error_within_sup_bound(target, objective):
    """|dx - dy h'(x)| <= |dy| sup|h' - h~'| elementwise (fp64: exact products; fp32: plus one rounding of dx), and
    the bound is nearly attained (so a too-large sup would be caught)."""
    if objective == "fit":
        result = fit(target, 1, "primitive")
        table, sup = Table.from_fit(result), result.sup_error
    else:
        entry = TABLES[f"{target}/2/{objective}"]
        table = Table(entry["thresholds"], entry["levels"])
        sup = sup_error(get_target(target), np.array(table.thresholds), np.array(table.levels))
        assert sup == pytest.approx(entry["sup_error"], rel=1e-9)
    grid = torch.linspace(-12, 12, 48001, dtype=torch.float64)
    x = torch.cat([grid, specials(table, torch.float64)[:-3]])  # finite points only
    df = torch.from_numpy(get_target(target).df(x.numpy()))
    for dtype in (torch.float64, torch.float32):
        xd = x.to(dtype)
        _, dx, dy = run(xd, "torch", target=target, table=table)
        exact = dy.double() * torch.from_numpy(get_target(target).df(xd.double().numpy()))
        slack = 0.0 if dtype == torch.float64 else torch.finfo(dtype).eps * dx.double().abs()
        assert ((dx.double() - exact).abs() <= dy.double().abs() * sup * (1 + 1e-12) + slack).all()
    attained = (torch.from_numpy(np.asarray(table.levels))[torch.searchsorted(
        torch.tensor(table.thresholds, dtype=torch.float64), x, right=True)] - df).abs().max()
    assert attained >= 0.99 * sup


# ---------------------------------------------------------------- saved bytes


BASELINE_ELEMENTS = {"gelu": 1, "gelu_tanh": 1, "silu": 1, "quick_gelu": 2}  # x; x and sigmoid(1.702 x)


def baseline_op(target):
    return {"gelu": F.gelu, "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "silu": F.silu,
            "quick_gelu": lambda v: v * torch.sigmoid(1.702 * v)}[target]


@pytest.mark.parametrize("dtype", (*DTYPES, torch.float64))
@pytest.mark.parametrize("target", TARGET_NAMES)
def test_saved_bytes_vs_baseline(target, dtype):
    size = torch.tensor([], dtype=dtype).element_size()
    for numel in (4097, 4, 1):
        x = make("numel4097", dtype)[:numel].clone().requires_grad_()  # its own storage of numel elements
        with record_saved() as base:
            baseline_op(target)(x)
        assert base.bytes == BASELINE_ELEMENTS[target] * numel * size
        for bits in range(1, 5):
            with record_saved() as ours:
                approxbp.approx_act(x, target, bits)
            assert ours.count == 2  # the packed codes and the (shared) table
            assert ours.bytes == math.ceil(numel * ops.PACK_BITS[bits] / 8) + TABLE_BYTES[bits]


def test_saved_bytes_on_triton_path_and_table_shared():
    x = make("numel4097", torch.bfloat16).requires_grad_()
    with use_backend("triton"), record_saved() as saved:
        for _ in range(3):
            approxbp.regelu2(x)
    assert saved.bytes == 3 * 1025 + TABLE_BYTES[2]  # three code buffers, one table storage


def test_no_saved_tensors_without_grad():
    with record_saved() as saved:
        approxbp.regelu2(make("numel4097", torch.float32))
    assert saved.bytes == 0


# ---------------------------------------------------------------- bad input


@pytest.fixture
def no_kernel(monkeypatch):
    """Any run of the op (reference or Triton) fails the test: errors must come first."""
    def boom(*args, **kwargs):
        raise AssertionError("the op ran before the input was validated")

    monkeypatch.setattr(ops, "_approx_act_fwd", boom)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64,
                                   torch.float8_e4m3fn, torch.float8_e5m2])  # float8: not one of the four dtypes
def test_rejects_non_float_tensors(no_kernel, dtype):
    with pytest.raises(TypeError, match=f"floating-point.*{dtype}"):
        approxbp.regelu2(torch.zeros(4, dtype=dtype))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"bits": 0}, ValueError, "bits must be an integer in 1..4"),
    ({"bits": 5}, ValueError, "bits must be an integer in 1..4"),
    ({"bits": True}, ValueError, "bits must be an integer in 1..4"),
    ({"bits": 2.0}, ValueError, "bits must be an integer in 1..4"),
    ({"target": "relu"}, ValueError, "unknown target 'relu'"),
    ({"objective": "empirical"}, ValueError, "no shipped tables for objective 'empirical'"),
    ({"table": "gelu"}, TypeError, "table must be a Table"),
    ({"table": ((1.0, 0.0, 2.0), (0, 1, 2, 3))}, ValueError, "strictly increasing"),
    ({"table": ((0.0,), (0.0, 1.0, 2.0))}, ValueError, "2\\*\\*bits levels"),
])
def test_rejects_bad_arguments(no_kernel, kwargs, error, match):
    with pytest.raises(error, match=match):
        approxbp.approx_act(torch.zeros(4), **kwargs)


def test_rejects_fit_of_another_target(no_kernel):
    with pytest.raises(ValueError, match="fitted to 'quick_gelu' but the activation is 'gelu'"):
        approxbp.regelu2(torch.zeros(4), table=fit("quick_gelu", 1))
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        approxbp.regelu2([1.0, 2.0])


def test_forced_triton_rejects_float64():
    with use_backend("triton"), pytest.raises(ValueError, match="Triton Approx-BP activation takes"):
        approxbp.regelu2(torch.zeros(4, dtype=torch.float64))


# ---------------------------------------------------------------- int64 offsets


@triton.jit
def _offsets_kernel(out_ptr, base, BLOCK: tl.constexpr, CAST: tl.constexpr):
    pid = tl.program_id(0) + base  # a program id just below 2^31 / BLOCK
    offs = flat_offsets(pid, BLOCK) if CAST else pid * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), offs.to(tl.int64))


@triton.jit
def _packed_offsets_kernel(byte_ptr, elem_ptr, base, BLOCK: tl.constexpr, PER: tl.constexpr):
    byte, elem = packed_offsets(tl.program_id(0) + base, BLOCK, PER)
    tl.store(byte_ptr + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), byte)
    tl.store(elem_ptr + tl.program_id(0) * BLOCK * PER + tl.arange(0, BLOCK * PER), elem)


def test_offsets_do_not_wrap_past_2_31(device):
    block = 16
    base = 2**31 // block - 1  # program base + 1 starts exactly at element 2^31
    out = torch.empty(2 * block, dtype=torch.int64, device=device)
    on_device(_offsets_kernel, out)[(2,)](out, base, BLOCK=block, CAST=True)
    assert torch.equal(out.cpu(), torch.arange(2 * block) + base * block)
    on_device(_offsets_kernel, out)[(2,)](out, base, BLOCK=block, CAST=False)  # the int32 product wraps: the cast
    assert out[block] == -(2**31)
    byte = torch.empty(2 * block, dtype=torch.int64, device=device)
    elem = torch.empty(2 * block * 4, dtype=torch.int64, device=device)
    on_device(_packed_offsets_kernel, byte)[(2,)](byte, elem, base, BLOCK=block, PER=4)
    assert torch.equal(byte.cpu(), torch.arange(2 * block) + base * block)
    assert torch.equal(elem.cpu(), torch.arange(8 * block) + base * block * 4)
    assert elem.max() > 2**33


# ---------------------------------------------------------------- torch.compile


def test_torch_compile_fullgraph():
    """The custom ops trace without graph breaks and give the eager gradients, also at a second shape, which
    recompiles with dynamic shapes (symbolic numel in the fake packed-codes size).  backend="aot_eager": dynamo,
    the fake implementations and AOTAutograd, as with inductor, but no C++ code generation, which takes 20-30 s
    cold on a 2-core CPU runner (inductor gives the same gradients; swap the backend to check)."""
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), approxbp.ReGELU2(), torch.nn.Linear(10, 6))

    def fn(x):
        return model(x).sum() + approxbp.approx_act(x, "quick_gelu", bits=3).square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for n in (4, 7):
        x = torch.randn(n, 6, requires_grad=True)
        compiled(x).backward()
        got = [x.grad, *(p.grad for p in model.parameters())]
        x.grad = None
        model.zero_grad()
        fn(x).backward()
        for a, b in zip(got, [x.grad, *(p.grad for p in model.parameters())], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        model.zero_grad()


# ---------------------------------------------------------------- modules


def test_modules():
    x = make("3d", torch.float32)
    layer = approxbp.ApproxAct("silu", 3, "derivative")
    assert repr(layer) == "ApproxAct(target='silu', bits=3, objective='derivative')"
    assert repr(approxbp.ReGELU2()) == "ReGELU2(target='gelu', bits=2, objective='primitive')"
    assert repr(approxbp.ReSiLU2()) == "ReSiLU2(target='silu', bits=2, objective='primitive')"
    assert layer.state_dict() == {}
    xr = x.clone().requires_grad_()
    layer(xr).backward(dy := torch.randn_like(x))
    assert torch.equal(xr.grad, expected_dx(x, dy, default_table("silu", 3, "derivative")))
    custom = CUSTOM_TABLES[1]
    layer.set_table(custom)
    assert layer.bits == 2 and "thresholds=(" in repr(layer)
    xr.grad = None
    layer(xr).backward(dy)
    assert torch.equal(xr.grad, expected_dx(x, dy, custom))
    torch.testing.assert_close(approxbp.ReSiLU2(custom)(x), F.silu(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match="set_table needs"):
        layer.set_table(None)
    with pytest.raises(ValueError, match="unknown target"):
        approxbp.ApproxAct("tanh")
