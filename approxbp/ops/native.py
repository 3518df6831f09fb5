"""The fused CPU loops of ``kernels/cpu_ops.c``: built on first use with the system C compiler, loaded with ctypes.

The CPU reference of an op (pure PyTorch) makes several passes over memory where one would do: counting the codes of
Approx-BP takes one comparison pass per threshold and a packing pass, its backward an unpacking pass, a gather and a
multiply; packed dropout packs and unpacks its mask with several more.  The C loops compute the same numbers in one
pass each (see the C file: same comparisons, same single rounding), so an op gives identical results whichever runs;
the tests check that bit for bit against the reference.

Build: ``cc -O3 -march=native -shared -fPIC`` (no fast-math) into ``$APPROXBP_CACHE`` (default
``~/.cache/approxbp``), the file named by a hash of the source, the compiler's version and this CPU's flags, written
atomically; ``-O3`` without ``-march=native`` where that fails.  Without a working compiler, or with
``APPROXBP_NATIVE=0``, ``available()`` is False and the ops run their pure-PyTorch reference (numbers unchanged).

Calls release the GIL (ctypes), so a tensor of at least ``PARALLEL_ELEMENTS`` elements is split into
``torch.get_num_threads()`` ranges that run on a thread pool.  Smaller ones run on the calling thread: the loops are
memory-bound, and right after a torch op its OpenMP threads still spin for a while, so on a busy core a second set of
threads gained nothing at the 3M elements of a MiniLM MLP (measured: 2.7-3.5 ms pooled against 2.8-3.2 ms on one
thread, 2 cores) while it halves the time of a 64M-element call.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).resolve().parents[2] / "kernels" / "cpu_ops.c"
PARALLEL_ELEMENTS = 1 << 22
FLAGS = (["-O3", "-march=native"], ["-O3"])  # tried in order; part of the cache key
_SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}
_COMPUTE = {torch.float32: ctypes.c_float, torch.float16: ctypes.c_float, torch.bfloat16: ctypes.c_float,
            torch.float64: ctypes.c_double}


def _source() -> Path:
    """kernels/cpu_ops.c: beside the repository's approxbp/, or inside the installed approxbp.kernels."""
    if SOURCE.is_file():
        return SOURCE
    return Path(__file__).resolve().parents[1] / "kernels" / "cpu_ops.c"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(cc: str, source: Path, cache: Path) -> Path | None:
    text = source.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(text + version.encode() + _cpu_flags().encode() + repr(FLAGS).encode()).hexdigest()[:16]
    target = cache / f"cpu_ops-{key}.so"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    for flags in FLAGS:
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            out = Path(tmp) / target.name
            done = subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", str(out), str(source)],
                                  capture_output=True, timeout=120)
            if done.returncode == 0:
                os.replace(out, target)  # atomic: concurrent builders (pytest-xdist workers) each write whole files
                return target
    return None


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded library, or None (no compiler, a failed build, or APPROXBP_NATIVE=0)."""
    if os.environ.get("APPROXBP_NATIVE", "1") == "0" or platform.system() == "Windows":
        return None
    cc, source = _compiler(), _source()
    if cc is None or not source.is_file():
        return None
    try:
        cache = Path(os.environ.get("APPROXBP_CACHE") or Path.home() / ".cache" / "approxbp")
        path = _build(cc, source, cache)
        return None if path is None else _declare(ctypes.CDLL(str(path)))
    except (OSError, RuntimeError, subprocess.SubprocessError):  # no home, unwritable cache, a failed build or load
        return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Return types of the loops, set once: approx_codes_* return whether every x was finite, the others nothing."""
    for suffix in _SUFFIX.values():
        getattr(lib, f"approx_codes_{suffix}").restype = ctypes.c_int
        for name in ("approx_step", "dropout_fwd"):
            getattr(lib, f"{name}_{suffix}").restype = None
    return lib


def available() -> bool:
    return library() is not None


def takes(*tensors: Tensor) -> bool:
    """Whether the C loops can run on these tensors: plain contiguous CPU tensors of a float dtype they take."""
    return available() and all(
        type(t) is torch.Tensor and t.device.type == "cpu" and t.dtype in _SUFFIX and t.is_contiguous()
        for t in tensors)


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="approxbp-native")


if hasattr(os, "register_at_fork"):  # a forked child has none of its parent's pool threads: it makes its own
    os.register_at_fork(after_in_child=_pool.cache_clear)


def _ranges(n: int) -> list[tuple[int, int]]:
    """[begin, end) splitting range(n) over torch's thread count, each begin a multiple of 64 elements."""
    workers = torch.get_num_threads() if n >= PARALLEL_ELEMENTS else 1
    size = -(-n // max(workers, 1) // 64) * 64 or 64
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _run(call, n: int) -> list:
    ranges = _ranges(n)  # none for an empty tensor
    if len(ranges) <= 1:
        return [call(*r) for r in ranges]
    return list(_pool(len(ranges)).map(lambda r: call(*r), ranges))


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def approx_codes(x: Tensor, thresholds: list[float], pack_bits: int, packed: Tensor) -> bool:
    """packed = the packed codes of x (thresholds in x's compute dtype); whether every x is finite."""
    fn = getattr(library(), f"approx_codes_{_SUFFIX[x.dtype]}")
    compute = _COMPUTE[x.dtype]
    t = (compute * len(thresholds))(*thresholds)
    results = _run(lambda b, e: fn(_ptr(x), ctypes.c_int64(b), ctypes.c_int64(e), t, len(thresholds), pack_bits,
                                   _ptr(packed)), x.numel())
    return all(results)


def approx_step(dy: Tensor, packed: Tensor, levels: list[float], pack_bits: int, dx: Tensor) -> None:
    """dx = dy * L[code], codes from ``packed``."""
    fn = getattr(library(), f"approx_step_{_SUFFIX[dy.dtype]}")
    table = (_COMPUTE[dy.dtype] * len(levels))(*levels)
    _run(lambda b, e: fn(_ptr(dy), _ptr(packed), table, pack_bits, ctypes.c_int64(b), ctypes.c_int64(e), _ptr(dx)),
         dy.numel())


def dropout_forward(x: Tensor, noise: Tensor, y: Tensor, bits: Tensor) -> None:
    """y = x * noise, bits = the packed (noise != 0)."""
    fn = getattr(library(), f"dropout_fwd_{_SUFFIX[x.dtype]}")
    _run(lambda b, e: fn(_ptr(x), _ptr(noise), ctypes.c_int64(b), ctypes.c_int64(e), _ptr(y), _ptr(bits)),
         x.numel())


def dropout_backward(dy: Tensor, bits: Tensor, scale: float, dx: Tensor) -> None:
    """dx = dy * (bit ? scale : 0): the step with 1-bit codes and the levels (0, scale)."""
    approx_step(dy, bits, [0.0, scale], 1, dx)
