"""approxbp.kernels.launch: one process runs the kernels compiled on CUDA tensors and interpreted on CPU tensors.

The ``device`` fixture (tests/conftest.py) gives cpu always (Triton's interpreter) and cuda where there is a GPU.
Codes and gradients of the Approx-BP kernels are exact, so the kernels on ``device`` must equal the CPU reference bit
for bit."""

import pytest
import torch
from triton.runtime.jit import JITFunction

from approxbp.kernels import approx_act as K
from approxbp.kernels.launch import on_device
from approxbp.ops import approx_act as ops
from approxbp.tables import default_table

COMPILED_MODE = pytest.mark.skipif(not isinstance(K._approx_act_fwd_kernel, JITFunction),
                                   reason="TRITON_INTERPRET=1 at import: the kernels are interpreted functions")


@COMPILED_MODE
def test_kernels_are_compiled_mode_and_cpu_launches_leave_triton_as_it_was():
    """No TRITON_INTERPRET: the kernels are JIT functions; a CPU launch interprets them and afterwards a JIT function
    called outside a kernel raises again (the interpreter's hook is undone)."""
    assert isinstance(K._approx_act_fwd_kernel, JITFunction)
    x = torch.randn(100)
    table = ops.table_on(default_table("gelu", 2), x.device)
    K.approx_act_forward(x, table, "gelu", 2, torch.empty_like(x), torch.empty(25, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="outside of the scope of a kernel"):
        K.to_fp32(x)


@COMPILED_MODE
def test_on_device_picks_by_device_and_passes_other_objects():
    kernel = K._approx_act_fwd_kernel
    assert on_device(kernel, torch.empty(1)) is not kernel
    assert on_device(kernel, torch.empty(1, device="meta")) is kernel
    other = object()
    assert on_device(other, torch.empty(1)) is other


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_codes_and_gradients_on_device_equal_the_reference(device, bits, dtype):
    table = default_table("silu", bits)
    pack = ops.PACK_BITS[bits]
    x = (torch.randn(5003, dtype=torch.float64) * 3).to(dtype)
    dy = torch.randn(5003).to(dtype)
    _, codes_ref = ops.approx_act_forward_reference(x, table, "silu", pack)
    saved = ops.table_on(table, torch.device("cpu"))
    dx_ref = ops.approx_act_backward_reference(dy, codes_ref, saved, pack)

    xd, table_d = x.to(device), ops.table_on(table, device)
    y, codes = torch.empty_like(xd), torch.empty(ops.packed_bytes(x.numel(), pack), dtype=torch.uint8, device=device)
    K.approx_act_forward(xd, table_d, "silu", pack, y, codes)
    dx = torch.empty_like(xd)
    K.approx_act_backward(dy.to(device), codes, table_d, pack, dx)
    assert torch.equal(codes.cpu(), codes_ref)
    assert torch.equal(dx.cpu(), dx_ref)


@COMPILED_MODE
def test_the_compiler_still_works_after_cpu_launches():
    """The interpreter patches triton.language while it runs (and its helper calls never undo theirs); after CPU
    launches of every kernel, this process still compiles them (for sm_90: a broken triton.language fails at once)."""
    from aot import TARGETS, compile_launch
    from aot_matrix import Case

    import approxbp
    from approxbp.ops.backend import use_backend

    x = torch.randn(3, 64, requires_grad=True)
    with use_backend("triton"):
        approxbp.approx_swiglu(x, x).sum().backward()
        approxbp.approx_act(x, "silu").sum().backward()
        approxbp.ms_layer_norm_affine(x, torch.ones(64), torch.zeros(64)).sum().backward()
    for case in (Case("act", "silu", torch.float32, bits=2), Case("norm", "affine", torch.float32, width=64)):
        for launch in case.launches():
            assert "ptx" in compile_launch(launch, TARGETS["sm_90"]).asm
