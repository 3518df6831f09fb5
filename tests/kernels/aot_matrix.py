"""Every kernel launch the ops can make, recorded from the ops themselves (forward and backward, Triton backend, CPU
tensors of each dtype the kernels take), with nothing run: the compile matrix of ``test_aot_compile.py``.

The axes come from the host code: activations TARGET_NAMES x bits 1..MAX_BITS x TRITON_DTYPES (the table's size
and PACK_BITS follow from bits); gated ops SwiGLU / GeGLU (erf and tanh) x bits x dtypes; MS-norms: every variant
(LayerNorm, RMSNorm, the affine LayerNorm with and without bias, with and without guarded features), x dtypes and
the output dtype of autocast, and row widths 2^0 .. 2^16 (the kernels' BLOCK is next_power_of_2(width), up to
MAX_BLOCK) plus one width that is not a multiple of 16 (strides without 16-divisibility)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from aot import TARGETS, Launch, Report, compile_launch, record, report, specialization_key

import approxbp
from approxbp.fit.result import MAX_BITS
from approxbp.kernels import approx_act as act_kernels
from approxbp.kernels import gated as gated_kernels
from approxbp.kernels import ms_norm as norm_kernels
from approxbp.ops.approx_act import TRITON_DTYPES
from approxbp.ops.backend import use_backend
from approxbp.tables import default_table
from approxbp.targets import TARGET_NAMES

MODULES = (act_kernels, gated_kernels, norm_kernels)
ELEMENTS = 2 * act_kernels.ELEMENTS_PER_PROGRAM  # elementwise ops: two programs, a multiple of 16 elements
ROWS = 8
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
GATED = {"swiglu": ("silu", {}), "geglu": ("gelu", {"approximate": "none"}),
         "geglu_tanh": ("gelu_tanh", {"approximate": "tanh"})}
NORMS = ("ln", "rms", "affine", "affine_guard", "affine_nobias", "affine_nobias_guard")
WIDTHS = (*(2**k for k in range(norm_kernels.MAX_BLOCK.bit_length())), 1000)


@dataclass(frozen=True)
class Case:
    """One op setting; ``launches()`` runs its forward and backward with every kernel recorded."""

    op: str  # act | gated | norm
    variant: str  # target, gated form or norm variant
    dtype: torch.dtype
    bits: int = 0  # act, gated
    width: int = 0  # norm
    out_dtype: torch.dtype | None = None  # norm under autocast

    @property
    def name(self) -> str:
        parts = [self.op, self.variant, DTYPE_NAMES[self.dtype]]
        if self.out_dtype is not None:
            parts.append(f"to-{DTYPE_NAMES[self.out_dtype]}")
        parts.append(f"bits{self.bits}" if self.bits else f"width{self.width}")
        return "-".join(parts)

    def launches(self) -> list[Launch]:
        return record(MODULES, self._run)

    def _run(self) -> None:
        with use_backend("triton"):
            if self.op == "act":
                x = torch.randn(ELEMENTS, dtype=self.dtype, requires_grad=True)
                approxbp.approx_act(x, self.variant, self.bits, table=default_table(self.variant, self.bits)).sum()\
                    .backward()
            elif self.op == "gated":
                target, kwargs = GATED[self.variant]
                gate, up = (torch.randn(ELEMENTS, dtype=self.dtype, requires_grad=True) for _ in range(2))
                fn = approxbp.approx_swiglu if self.variant == "swiglu" else approxbp.approx_geglu
                fn(gate, up, table=default_table(target, self.bits), **kwargs).sum().backward()
            else:
                self._run_norm()

    def _run_norm(self) -> None:
        x = torch.randn(ROWS, self.width, dtype=self.dtype, requires_grad=True)
        weight = torch.ones(self.width, dtype=self.dtype)
        if self.variant.endswith("guard"):
            weight[0] = 0.0  # |gamma| below tiny: the feature's y is saved (GUARD)
        bias = None if "nobias" in self.variant else torch.zeros(self.width, dtype=self.dtype)
        autocast = (torch.autocast("cpu", dtype=self.out_dtype) if self.out_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            if self.variant == "ln":
                y = approxbp.ms_layer_norm(x, self.width)
            elif self.variant == "rms":
                y = approxbp.ms_rms_norm(x, self.width)
            else:
                y = approxbp.ms_layer_norm_affine(x, weight.requires_grad_(), bias)
        y.float().sum().backward()


def cases() -> list[Case]:
    """The full matrix (see the module docstring)."""
    out = [Case("act", t, d, bits=b) for t in TARGET_NAMES for b in range(1, MAX_BITS + 1) for d in TRITON_DTYPES]
    out += [Case("gated", g, d, bits=b) for g in GATED for b in range(1, MAX_BITS + 1) for d in TRITON_DTYPES]
    out += [Case("norm", v, d, width=w) for v in NORMS for w in WIDTHS for d in TRITON_DTYPES]
    out += [Case("norm", v, d, width=1024, out_dtype=o) for v in NORMS for d in TRITON_DTYPES
            for o in (torch.float16, torch.bfloat16) if o != d]
    return out


# Elementwise kernels: how many element streams each loads and stores (x | dy | gate, up | dy, gate, up -> ...).
ELEMENTWISE_STREAMS = {"_approx_act_fwd_kernel": (1, 1), "_approx_act_bwd_kernel": (1, 1),
                       "_gated_fwd_kernel": (2, 1), "_gated_bwd_kernel": (3, 2)}


def vector_bytes_expected(launch: Launch, target) -> tuple[int, int] | None:
    """(load, store) bytes per thread that must move in 128-bit accesses, for the elementwise kernels: all element
    bytes of their streams (elements per program over threads, times the item size); None for other kernels."""
    streams = ELEMENTWISE_STREAMS.get(launch.kernel.fn.__name__)
    if streams is None:
        return None
    per_program = launch.kwargs["BLOCK"] * 8 // launch.kwargs.get("PACK_BITS", 8)
    item = launch.args[0].element_size()
    per_thread = per_program // (launch.num_warps * target.warp_size) * item
    return streams[0] * per_thread, streams[1] * per_thread


# MS-norm kernels: the row streams each loads and stores (argument names).
ROW_STREAMS = {"_ms_norm_fwd_kernel": (("X",), ("Y",)), "_ms_norm_bwd_kernel": (("G", "Y"), ("DX",))}


def row_vector_bytes_expected(launch: Launch, target) -> tuple[int, int] | None:
    """(load, store) bytes per thread of the MS-norm row streams that must move in 128-bit accesses: each stream's
    share of a row (BLOCK over threads, times its item size) where that is 16 bytes or more and the width N is a
    multiple of 16 (the JIT then knows every row start is 16-byte aligned); None for other kernels or widths."""
    streams = ROW_STREAMS.get(launch.kernel.fn.__name__)
    names = launch.kernel.arg_names
    if streams is None or launch.args[names.index("N")] % 16:
        return None
    per_thread = launch.kwargs["BLOCK"] // (launch.num_warps * target.warp_size)

    def wide(stream_names):
        shares = (per_thread * launch.args[names.index(name)].element_size() for name in stream_names)
        return sum(share for share in shares if share >= 16)

    return wide(streams[0]), wide(streams[1])


def all_cases() -> list[tuple[Case, str]]:
    """The full matrix, for every target."""
    return [(case, target) for case in cases() for target in TARGETS]


def default_cases() -> list[tuple[Case, str]]:
    """The default run: each kernel for sm_80 and sm_90 in every dtype at the ops' usual settings (GELU and SwiGLU
    with 2-bit tables, LayerNorm of width 1024), gfx942 in bf16, and a few of the heaviest settings: the affine
    LayerNorm with guarded features, 4-bit tables (the most thresholds), RMSNorm at MAX_BLOCK under bf16 autocast."""
    usual = [Case("act", "gelu", d, bits=2) for d in TRITON_DTYPES]
    usual += [Case("gated", "swiglu", d, bits=2) for d in TRITON_DTYPES]
    usual += [Case("norm", "ln", d, width=1024) for d in TRITON_DTYPES]
    out = [(case, target) for case in usual for target in ("sm_80", "sm_90")]
    out += [(Case("norm", "affine_guard", torch.bfloat16, width=4096), "sm_90"),
            (Case("act", "silu", torch.float16, bits=4), "sm_90"),
            (Case("gated", "geglu_tanh", torch.float32, bits=4), "sm_80"),
            (Case("norm", "rms", torch.float32, width=norm_kernels.MAX_BLOCK, out_dtype=torch.bfloat16), "sm_80")]
    out += [(case, "gfx942") for case in usual if case.dtype == torch.bfloat16]
    return out


def problems(launch: Launch, target: str, got: Report) -> list[str]:
    """What a compiled launch gets wrong: spills or local memory, and element / row streams not moved in 128-bit
    accesses (elementwise kernels: exactly their element bytes; norms: at least their row streams)."""
    found = []
    if got.spilled_bytes or got.local_accesses:
        found.append(f"spills {got.spilled_bytes} bytes, {got.local_accesses} local accesses")
    wide = (16 * got.loads[128], 16 * got.stores[128])
    exact = vector_bytes_expected(launch, TARGETS[target])
    if exact is not None and wide != exact:
        found.append(f"128-bit (load, store) bytes per thread {wide}, expected {exact}")
    rows = row_vector_bytes_expected(launch, TARGETS[target])
    if rows is not None and not (wide[0] >= rows[0] and wide[1] >= rows[1]):
        found.append(f"128-bit (load, store) bytes per thread {wide}, expected at least {rows}")
    return found


def main(targets: Sequence[str]) -> None:
    """Compile the full matrix for ``targets`` (default: all) and print one line per distinct launch (launches the JIT
    would compile to the same code, such as the activation backward of every target function, once), then per kernel
    and target: launches, the most registers, spilled bytes, the largest stack frame, how many launches have
    problems, and the compile time."""
    summary: dict[tuple[str, str], list] = {}
    seen = set()
    for case, target in all_cases():
        if targets and target not in targets:
            continue
        for launch in case.launches():
            key = specialization_key(launch, TARGETS[target]), target
            if key in seen:
                continue
            seen.add(key)
            start = time.perf_counter()
            got = report(compile_launch(launch, TARGETS[target]))
            seconds = time.perf_counter() - start
            name = launch.kernel.fn.__name__.strip("_")
            issues = problems(launch, target, got)
            print(f"{target:7} {name:18} {case.name:40} regs {got.registers:3} spill {got.spilled_bytes:4} stack "
                  f"{got.stack_bytes:3} loads {dict(got.loads)} stores {dict(got.stores)} {seconds:.2f}s "
                  f"{'; '.join(issues) or 'ok'}", flush=True)
            row = summary.setdefault((name, target), [0, 0, 0, 0, 0, 0.0])
            row[0] += 1
            row[1] = max(row[1], got.registers)
            row[2] += got.spilled_bytes
            row[3] = max(row[3], got.stack_bytes)
            row[4] += bool(issues)
            row[5] += seconds
    print("\nkernel             target  launches  max regs  spilled  max stack  problems  compile s")
    for (name, target), (n, regs, spilled, stack, bad, seconds) in sorted(summary.items()):
        print(f"{name:18} {target:7} {n:8} {regs:9} {spilled:8} {stack:10} {bad:9} {seconds:10.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
