"""Kernels suite: forward and backward of every approxbp op against PyTorch's own op and Liger-Kernel's.

Each op runs on a (rows, 4096) input of a given size in bytes (the gated ops take two such inputs, gate and up) and
dtype.  Forward: the op's call; backward: ``torch.autograd.grad`` of its output with a fixed random upstream
gradient (graph retained, so only the backward is timed).  Achieved bandwidth = bytes moved / median time, where
bytes moved counts the tensors at the op's boundary once each:

    forward   inputs read + outputs written + what it saves for backward beyond them (e.g. Approx-BP's codes)
    backward  upstream gradient + every saved storage (``approxbp.saved.record_saved``) read + input grads written

Intermediate tensors an unfused op writes and reads again are not counted, so an unfused op's figure is what it
would reach if it moved only that.  The device's copy bandwidth is measured here too (``dst.copy_(src)``, 2 x
bytes per copy, at every size); fraction_of_copy divides by the largest copy bandwidth measured.  On CPU the
approxbp ops run their pure-PyTorch reference (the Triton kernels need CUDA) and Liger-Kernel (Triton only) is
recorded as skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.timing import Timing, time_call

HIDDEN = 4096
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MiB = 2**20
SIZES = tuple(MiB * m for m in (1, 4, 16, 64, 256, 1024, 2048))
QUICK_SIZES = (64 * 2**10, 256 * 2**10)  # CPU seconds: the pure-PyTorch reference is far slower than a kernel
LIGER_CPU = "Liger-Kernel runs Triton kernels only (needs CUDA)"


@dataclass(frozen=True)
class Scale:
    sizes: tuple[int, ...]  # bytes of each (rows, HIDDEN) input
    dtypes: tuple[str, ...]
    warmup: int
    repeats: int


SCALES = {False: Scale(SIZES, tuple(DTYPES), 3, 20), True: Scale(QUICK_SIZES, tuple(DTYPES), 1, 3)}


@dataclass(frozen=True)
class Op:
    """One op: the argument roles it takes and, per implementation, the function of those arguments."""

    name: str
    args: tuple[str, ...]  # "x", "gate", "up": (rows, HIDDEN) inputs; "weight", "bias": (HIDDEN,) parameters
    grads: tuple[str, ...]  # the arguments whose gradients the backward computes
    impls: dict[str, Callable]  # "approxbp", "torch" and, where it can run, "liger"
    note: str = ""


def _liger():
    """Liger-Kernel's functional ops, or the reason they cannot run."""
    try:
        from liger_kernel.transformers import functional
    except ImportError as e:
        return None, f"liger-kernel is not importable: {e}"
    return functional, None


def ops(liger) -> list[Op]:
    """The ops; ``liger`` is Liger-Kernel's functional module, or None where it cannot run (no "liger" impl)."""
    import approxbp

    lg = liger

    def peer(make):
        return {"liger": make()} if lg is not None else {}

    return [
        Op("regelu2", ("x",), ("x",), {"approxbp": approxbp.regelu2, "torch": F.gelu}),
        Op("resilu2", ("x",), ("x",), {"approxbp": approxbp.resilu2, "torch": F.silu}),
        Op("approx_swiglu", ("gate", "up"), ("gate", "up"),
           {"approxbp": approxbp.approx_swiglu, "torch": lambda g, u: F.silu(g) * u,
            **peer(lambda: lg.liger_swiglu)}),
        Op("approx_geglu", ("gate", "up"), ("gate", "up"),
           {"approxbp": lambda g, u: approxbp.approx_geglu(g, u, approximate="tanh"),
            "torch": lambda g, u: F.gelu(g, approximate="tanh") * u, **peer(lambda: lg.liger_geglu)},
           "GELU in its tanh form, the one Liger-Kernel implements"),
        Op("ms_layer_norm", ("x", "weight", "bias"), ("x",),
           {"approxbp": lambda x, w, b: approxbp.ms_layer_norm(x, HIDDEN),
            "torch": lambda x, w, b: F.layer_norm(x, (HIDDEN,)),
            **peer(lambda: lambda x, w, b: lg.liger_layer_norm(x, w, b, 1e-5))},
           "no affine; Liger-Kernel's LayerNorm needs weight and bias (ones and zeros, not trained), and computes "
           "their gradients anyway"),
        Op("ms_rms_norm", ("x", "weight"), ("x",),
           {"approxbp": lambda x, w: approxbp.ms_rms_norm(x, HIDDEN), "torch": lambda x, w: F.rms_norm(x, (HIDDEN,)),
            **peer(lambda: lambda x, w: lg.liger_rms_norm(x, w, 1e-6, in_place=False))},
           "no affine; Liger-Kernel's RMSNorm needs a weight (ones, not trained), and computes its gradient anyway"),
        Op("ms_layer_norm_affine", ("x", "weight", "bias"), ("x", "weight", "bias"),
           {"approxbp": approxbp.ms_layer_norm_affine, "torch": lambda x, w, b: F.layer_norm(x, (HIDDEN,), w, b),
            **peer(lambda: lambda x, w, b: lg.liger_layer_norm(x, w, b, 1e-5))},
           "the output-saving affine LayerNorm (post-LN)"),
    ]


NO_LIGER_PEER = {"regelu2": "Liger-Kernel has no standalone GELU", "resilu2": "Liger-Kernel has no standalone SiLU"}


def make_args(op: Op, rows: int, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    args = {}
    for role in op.args:
        if role in ("x", "gate", "up"):
            t = torch.randn(rows, HIDDEN, generator=gen, device=device, dtype=dtype)
        elif role not in op.grads:  # a peer's affine parameters where the op has none: the identity
            t = (torch.ones if role == "weight" else torch.zeros)(HIDDEN, device=device, dtype=dtype)
        else:
            noise = 0.1 * torch.randn(HIDDEN, generator=gen, device=device, dtype=dtype)
            t = 1.0 + noise if role == "weight" else noise
        args[role] = t.requires_grad_(role in op.grads)
    return args


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def measure_impl(fn: Callable, args: dict[str, torch.Tensor], grads: tuple[str, ...], device: str,
                 scale: Scale) -> tuple[dict, torch.Tensor]:
    """Forward and backward timings and bytes moved of one implementation; also returns its output."""
    from approxbp.saved import record_saved

    inputs = list(args.values())
    with record_saved() as saved:
        y = fn(*inputs)
    boundary = {_key(t) for t in inputs} | {_key(y)}
    extra_saved = sum(n for k, n in saved.storages.items() if k not in boundary)
    dy = torch.randn(y.shape, generator=torch.Generator(device=device).manual_seed(1), device=device, dtype=y.dtype)
    needs = [args[r] for r in grads]
    forward_bytes = sum(t.nbytes for t in inputs) + y.nbytes + extra_saved
    backward_bytes = dy.nbytes + saved.bytes + sum(t.nbytes for t in needs)
    forward = time_call(lambda: fn(*inputs), device, scale.warmup, scale.repeats)
    backward = time_call(lambda: torch.autograd.grad(y, needs, dy, retain_graph=True), device, scale.warmup,
                         scale.repeats)
    return {"forward": _direction(forward, forward_bytes), "backward": _direction(backward, backward_bytes),
            "saved_bytes": saved.bytes}, y.detach()


def _direction(timing: Timing, nbytes: int) -> dict:
    return {"timing": timing.to_json(), "bytes_moved": nbytes, "bandwidth_bytes_per_s": nbytes / timing.median_s}


def copy_bandwidth(size: int, device: str, scale: Scale) -> dict:
    src = torch.empty(size, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    timing = time_call(lambda: dst.copy_(src), device, scale.warmup, scale.repeats)
    return {"size_bytes": size, "timing": timing.to_json(), "bandwidth_bytes_per_s": 2 * size / timing.median_s}


def run(device: str, quick: bool, log: Callable[[str], None] = print, scale: Scale | None = None) -> dict:
    """Every op x implementation x dtype x size, forward and backward; the copy bandwidth at every size.
    ``scale`` overrides the sizes, dtypes and repeats ``quick`` selects."""
    scale = scale or SCALES[quick]
    liger, liger_reason = _liger() if device == "cuda" else (None, LIGER_CPU)
    liger_ops = ops(liger)
    copies = [copy_bandwidth(size, device, scale) for size in scale.sizes]
    peak_copy = max(c["bandwidth_bytes_per_s"] for c in copies)
    results, skipped = [], []
    for op in liger_ops:
        if "liger" not in op.impls:
            skipped.append({"op": op.name, "impl": "liger", "reason": NO_LIGER_PEER.get(op.name, liger_reason)})
        for impl, fn in op.impls.items():
            for dtype_name in scale.dtypes:
                for size in scale.sizes:
                    log(f"kernels: {op.name} {impl} {dtype_name} {size / MiB:g} MiB")
                    results.append(_case(op, impl, fn, dtype_name, size, device, scale, peak_copy))
                    if device == "cuda":
                        torch.cuda.empty_cache()
    _compare_with_torch(results)
    return {"hidden": HIDDEN, "sizes_bytes": list(scale.sizes), "dtypes": list(scale.dtypes),
            "warmup": scale.warmup, "repeats": scale.repeats,
            "approxbp_backend": "triton" if device == "cuda" else "pytorch reference (CPU)",
            "copy": copies, "copy_bandwidth_bytes_per_s": peak_copy,
            "notes": {op.name: op.note for op in liger_ops if op.note}, "results": results, "skipped": skipped}


def _case(op: Op, impl: str, fn: Callable, dtype_name: str, size: int, device: str, scale: Scale,
          peak_copy: float) -> dict:
    dtype = DTYPES[dtype_name]
    rows = max(1, size // (HIDDEN * dtype.itemsize))
    args = make_args(op, rows, dtype, device)
    measured, y = measure_impl(fn, args, op.grads, device, scale)
    for direction in ("forward", "backward"):
        measured[direction]["fraction_of_copy"] = measured[direction]["bandwidth_bytes_per_s"] / peak_copy
    reference = op.impls["torch"](*args.values()).detach()
    diff = (y.float() - reference.float()).abs().max().item()
    return {"op": op.name, "impl": impl, "dtype": dtype_name, "shape": [rows, HIDDEN], "size_bytes": rows * HIDDEN *
            dtype.itemsize, **measured, "forward_max_abs_diff_vs_torch": diff}


def _compare_with_torch(results: list[dict]) -> None:
    """Add each result's speed-up over PyTorch's op at the same op, dtype and size (torch time / its time)."""
    torch_times = {(r["op"], r["dtype"], r["size_bytes"]): r for r in results if r["impl"] == "torch"}
    for r in results:
        base = torch_times[(r["op"], r["dtype"], r["size_bytes"])]
        for direction in ("forward", "backward"):
            r[direction]["speedup_vs_torch"] = base[direction]["timing"]["median_s"] / r[direction]["timing"][
                "median_s"]
