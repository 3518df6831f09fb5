"""Ahead-of-time compilation of approxbp's Triton kernels for GPU targets, on a machine without a GPU.

A launch is recorded from the kernels' own host functions (``approxbp.kernels.*``) called with CPU tensors: the
kernel object in the module is swapped for a recorder, so the host code picks BLOCK, num_warps and every constexpr
as it would for a real launch.  The recorded arguments then go through the JIT's own specialisation
(``create_function_from_signature`` + ``JITFunction._pack_args``, the code ``JITFunction.run`` calls), with the
backend of the requested target: pointers whose address is a multiple of 16 and ints divisible by 16 get
``tt.divisibility = 16``, ints equal to 1 become constants, exactly as at a launch.  ``triton.compile`` then builds
TTIR .. PTX and a cubin (NVIDIA, with the bundled ptxas) or AMDGCN and a hsaco (AMD).

What a compiled kernel tells about bandwidth and registers, read from its own output:
- global memory accesses by width in bits: PTX ``ld.global``/``st.global`` with ``.v2``/``.v4`` of ``.b8``..``.b64``
  or ``.b128``; AMDGCN ``buffer_load``/``buffer_store`` of ``byte``..``dwordx4`` (Triton's AMD backend accesses the
  tensors it can bound, here every element stream, through buffer instructions; the table, read at uniform
  addresses, goes through ``global_load`` and ``s_load``, where the compiler may merge its entries into one wide
  load, so those are not counted);
- registers and spills: NVIDIA from ptxas' ``-v`` log of the compile (registers, spill stores and loads, stack
  frame; ``n_regs``/``n_spills`` of the metadata are only filled by a driver that loads the kernel) and the PTX's
  ``ld.local``/``st.local``; AMD from the kernel descriptor (``.vgpr_count``, ``.vgpr_spill_count``,
  ``.sgpr_spill_count``, ``.private_segment_fixed_size``) and ``scratch_`` accesses.
Every compile uses a fresh cache directory and TRITON_ALWAYS_COMPILE: nothing is reused across runs."""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack, redirect_stdout
from dataclasses import dataclass
from types import ModuleType
from unittest import mock

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

TARGETS = {
    "sm_80": GPUTarget("cuda", 80, 32),
    "sm_90": GPUTarget("cuda", 90, 32),
    "gfx942": GPUTarget("hip", "gfx942", 64),
}


@dataclass(frozen=True)
class Launch:
    """One recorded launch: the kernel, its grid and its arguments as the host function passed them."""

    kernel: JITFunction
    grid: tuple
    args: tuple
    kwargs: dict

    @property
    def num_warps(self) -> int:
        return self.kwargs.get("num_warps", 4)


class _Recorder:
    """Stands for a kernel in its module: ``kernel[grid](*args, **kwargs)`` appends a Launch instead of running."""

    def __init__(self, kernel: JITFunction, launches: list[Launch]):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(Launch(self.kernel, tuple(grid), args, kwargs))


def kernels_of(module: ModuleType) -> dict[str, JITFunction]:
    """The launchable kernels of a module: its JIT functions named ``_*_kernel``."""
    return {name: value for name, value in vars(module).items()
            if isinstance(value, JITFunction) and name.startswith("_") and name.endswith("_kernel")}


def record(modules: Sequence[ModuleType], call: Callable[[], object]) -> list[Launch]:
    """The launches ``call()`` makes through the kernels of ``modules``, recorded, none run."""
    launches: list[Launch] = []
    with ExitStack() as stack:
        for module in modules:
            for name, kernel in kernels_of(module).items():
                stack.enter_context(mock.patch.object(module, name, _Recorder(kernel, launches)))
        call()
    return launches


def _bind(launch: Launch, target: GPUTarget):
    backend = make_backend(target)
    binder = create_function_from_signature(launch.kernel.signature, launch.kernel.params, backend)
    return backend, *binder(*launch.args, **launch.kwargs)


def specialization_key(launch: Launch, target: GPUTarget) -> tuple:
    """What the JIT's cache keys a launch on (types, alignment, constexprs, options): equal keys, equal code."""
    _, _, specialization, options = _bind(launch, target)
    return launch.kernel.fn.__name__, repr(specialization), repr(sorted(options.items()))


def compile_launch(launch: Launch, target: GPUTarget):
    """triton.compile of the launch for ``target``, specialised as the JIT specialises a launch there."""
    kernel = launch.kernel
    backend, bound, specialization, options = _bind(launch, target)
    options, signature, constexprs, attrs = kernel._pack_args(backend, launch.kwargs, bound, specialization, options)
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    log = io.StringIO()
    with (tempfile.TemporaryDirectory() as cache, redirect_stdout(log),
          mock.patch.dict(os.environ, {"TRITON_CACHE_DIR": cache, "TRITON_ALWAYS_COMPILE": "1",
                                       "TRITON_DUMP_PTXAS_LOG": "1"})):
        compiled = triton.compile(source, target=target, options=options.__dict__)
    return Compiled(compiled.asm, log.getvalue())


@dataclass(frozen=True)
class Compiled:
    """The compiler's stages (``asm``: ttir, ttgir, llir, ptx/cubin or amdgcn/hsaco) and ptxas' ``-v`` log."""

    asm: dict
    ptxas_log: str


@dataclass(frozen=True)
class Report:
    """What the compiled code says: global accesses counted by width in bits, registers per thread, bytes spilled
    (stores + loads), the stack frame, and local-memory instructions."""

    loads: Counter
    stores: Counter
    registers: int
    spilled_bytes: int
    stack_bytes: int
    local_accesses: int

    def widest(self, kind: str) -> int:
        return max(self.loads if kind == "load" else self.stores, default=0)


_PTX_ACCESS = re.compile(r"\b(ld|st)\.global(?:\.[a-z0-9_:]+)*?(?:\.v(\d))?\.b(\d+)\b")
_AMD_BITS = {"short": 16, "ushort": 16, "sshort": 16, "byte": 8, "ubyte": 8, "sbyte": 8}


def _ptx_accesses(ptx: str) -> tuple[Counter, Counter]:
    loads, stores = Counter(), Counter()
    for op, vec, bits in _PTX_ACCESS.findall(ptx):
        (loads if op == "ld" else stores)[int(vec or 1) * int(bits)] += 1
    return loads, stores


def _amd_accesses(asm: str) -> tuple[Counter, Counter]:
    loads, stores = Counter(), Counter()
    for op, suffix in re.findall(r"\bbuffer_(load|store)_(\w+)", asm):
        if suffix.startswith("dword"):
            bits = 32 * int(suffix[6:] or 1) if suffix[5:6] in ("", "x") else 32
        elif suffix.startswith("b") and suffix[1:].isdigit():
            bits = int(suffix[1:])
        else:
            bits = next((b for name, b in _AMD_BITS.items() if suffix.startswith(name)), 16)
        (loads if op == "load" else stores)[bits] += 1
    return loads, stores


def _field(text: str, pattern: str, what: str) -> int:
    found = re.search(pattern, text)
    if found is None:
        raise RuntimeError(f"no {what} in:\n{text}")
    return int(found.group(1))


def report(compiled: Compiled) -> Report:
    if "ptx" in compiled.asm:
        ptx, log = compiled.asm["ptx"], compiled.ptxas_log
        spilled = (_field(log, r"(\d+) bytes spill stores", "spill stores")
                   + _field(log, r"(\d+) bytes spill loads", "spill loads"))
        return Report(*_ptx_accesses(ptx), _field(log, r"Used (\d+) registers", "registers"), spilled,
                      _field(log, r"(\d+) bytes stack frame", "stack frame"),
                      len(re.findall(r"\b(?:ld|st)\.local\b", ptx)))
    asm = compiled.asm["amdgcn"]
    spilled = 4 * (_field(asm, r"\.vgpr_spill_count:\s+(\d+)", ".vgpr_spill_count")
                   + _field(asm, r"\.sgpr_spill_count:\s+(\d+)", ".sgpr_spill_count"))
    scratch = _field(asm, r"\.private_segment_fixed_size:\s+(\d+)", ".private_segment_fixed_size")
    return Report(*_amd_accesses(asm), _field(asm, r"\.vgpr_count:\s+(\d+)", ".vgpr_count"), spilled, scratch,
                  len(re.findall(r"\bscratch_(?:load|store)", asm)))
