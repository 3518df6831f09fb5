"""Every Triton kernel compiles ahead of time for the real GPU targets, with no GPU here (issue 14): sm_80 and sm_90
(PTX and a cubin from the bundled ptxas) and AMD's gfx942 (AMDGCN and a hsaco), for the launches the ops make
(``aot_matrix``: recorded from the ops' own host code, specialised as the JIT specialises them).  The interpreter
accepts code the compiler rejects and says nothing about the code the compiler makes; these tests check:

- no register spills and no local-memory (scratch) accesses, any kernel;
- elementwise kernels (activations, gated): every byte of every element stream (x, y, dy, dx, gate, up, ...) moves
  in 128-bit accesses (``ld.global.v4.b32`` and the like; ``global_load_dwordx4`` on AMD) when the pointers are
  16-byte aligned and the element count divisible by 16, as the JIT sees them for tensors from torch's allocator;
- MS-norms: rows of a width divisible by 16 are read and written in 128-bit accesses where a thread holds 16 bytes
  or more of the row.

The default run compiles each kernel for sm_80 and sm_90 in every dtype (fp32, fp16, bf16) at the ops' usual
settings, for gfx942 in bf16, and a few of the heaviest settings (about 20 s of CPU time).  ``APPROXBP_AOT=full``
compiles the whole matrix: every activation and gated form, bits 1..4, every MS-norm variant at every BLOCK,
autocast output dtypes, for all three targets (about 6 min of CPU time; ``python tests/kernels/aot_matrix.py
[sm_80 sm_90 gfx942]`` prints it as a table, each distinct launch once)."""

import dataclasses
import os

import pytest
import torch
from aot import TARGETS, compile_launch, report
from aot_matrix import ELEMENTWISE_STREAMS, Case, all_cases, default_cases, problems

from approxbp.kernels import approx_act as act_kernels

FULL = os.environ.get("APPROXBP_AOT") == "full"
pytestmark = pytest.mark.skipif(not hasattr(act_kernels._approx_act_fwd_kernel, "params"),
                                reason="the kernels are interpreted functions (TRITON_INTERPRET=1 at import): "
                                       "nothing to compile")


def _params() -> list:
    chosen = all_cases() if FULL else default_cases()
    return [pytest.param(case, target, id=f"{case.name}-{target}") for case, target in chosen]


@pytest.mark.parametrize(("case", "target"), _params())
def test_compiles_without_spills_and_vectorises(case: Case, target: str):
    launches = case.launches()
    assert launches, f"{case.name} launched no kernel"
    for launch in launches:
        found = problems(launch, target, report(compile_launch(launch, TARGETS[target])))
        assert not found, (launch.kernel.fn.__name__, found)


def test_elementwise_kernels_are_all_checked():
    """Every kernel of the elementwise modules has its element streams listed (a new kernel cannot go unchecked)."""
    from aot import kernels_of

    from approxbp.kernels import gated as gated_kernels

    names = {*kernels_of(act_kernels), *kernels_of(gated_kernels)}
    assert names == set(ELEMENTWISE_STREAMS)


def test_default_run_has_every_kernel_for_sm80_and_sm90_in_every_dtype():
    seen = {(launch.kernel.fn.__name__, case.dtype, target)
            for case, target in default_cases() if target in ("sm_80", "sm_90") for launch in case.launches()}
    kernels = {name for name, _, _ in seen}
    assert len(kernels) == 6
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    assert {(k, d, t) for k in kernels for d in dtypes for t in ("sm_80", "sm_90")} <= seen


def test_checks_see_scalar_accesses_and_spills():
    """The checks fail where they should: an element count not divisible by 16 (the JIT cannot prove the masked
    accesses 16-byte aligned: 16-bit scalar loads and stores), and an affine MS-norm at BLOCK 16384, above
    MAX_BLOCK (8192), which spills."""
    from aot import record
    from aot_matrix import MODULES

    import approxbp
    from approxbp.ops.backend import use_backend

    def odd_count():
        with use_backend("triton"):
            x = torch.randn(8191, dtype=torch.bfloat16, requires_grad=True)
            approxbp.approx_act(x, "gelu", 2).sum().backward()

    for launch in record(MODULES, odd_count):
        found = problems(launch, "sm_90", report(compile_launch(launch, TARGETS["sm_90"])))
        assert len(found) == 1 and found[0].startswith("128-bit (load, store) bytes per thread (0, 0)"), found
    forward = Case("norm", "affine_guard", torch.float32, width=8192).launches()[0]
    too_wide = dataclasses.replace(forward, kwargs={**forward.kwargs, "BLOCK": 2 * forward.kwargs["BLOCK"]})
    found = problems(too_wide, "sm_90", report(compile_launch(too_wide, TARGETS["sm_90"])))
    assert len(found) == 1 and found[0].startswith("spills"), found
