"""The host layer of every op: which implementation runs, which dtypes and layouts it takes, how kernels are called.

- Dispatch (``runs_kernels``, ``runs_native``): Triton kernels for CUDA tensors; on CPU the fused C loops of
  ``approxbp.ops.native`` where they are built and cover the op, else the exact pure-PyTorch reference (the C loops
  give the reference's numbers bit for bit).  ``use_backend("torch")`` forces the reference, ``use_backend("native")``
  the C loops (ValueError where they are not built) and ``use_backend("triton")`` the kernels (on CPU tensors they
  run in Triton's interpreter); forcing the kernels on what they do not take is a one-line ValueError.
- Dtypes: every op takes FLOAT_DTYPES (``check_float_tensor``, before anything runs); the kernels take
  TRITON_DTYPES, fp64 runs on the reference.
- Layout: each custom op makes its tensor inputs contiguous (``contiguous``) before either implementation sees them,
  so results never depend on strides, and returns contiguous outputs.
- Kernel host functions (``kernel``): imported on first use (TRITON_INTERPRET is read when a kernel is defined) from
  ``approxbp.kernels.<module>``; they take contiguous inputs, write into outputs the op allocated and return None.
- The CPU reference works elementwise in blocks of BLOCK_ELEMENTS elements (``blocks``), or of whole rows for the
  norms (``row_blocks``), writing each block's result straight into the output, so its scratch memory is a few
  blocks whatever the tensor's size.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

BACKENDS = ("auto", "torch", "native", "triton")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_ELEMENTS = 1 << 20
_backend = "auto"


def get_backend() -> str:
    return _backend


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """"auto": Triton for CUDA tensors, the C loops or the reference on CPU; "torch": always the reference;
    "native": the C loops on CPU tensors; "triton": always Triton."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    previous, _backend = _backend, name
    try:
        yield
    finally:
        _backend = previous


def runs_kernels(x: torch.Tensor, what: str, max_features: Callable[[], int] | None = None) -> bool:
    """Whether the op on ``x`` runs the Triton kernels: the backend asks for them and they take x's dtype (and, with
    ``max_features``, called only then, rows that wide).  Forced (``use_backend("triton")``) on anything else:
    ValueError naming what the kernels take."""
    if not (_backend == "triton" or (_backend == "auto" and x.is_cuda)):
        return False
    limit = None if max_features is None else max_features()
    supported = x.dtype in TRITON_DTYPES and (limit is None or x.shape[-1] <= limit)
    if _backend == "triton" and not supported:
        rows = "" if limit is None else f" and at most {limit} features"
        got = "" if limit is None else f" with {x.shape[-1]} features"
        raise ValueError(f"the Triton {what} takes {TRITON_DTYPES}{rows}, got {x.dtype}{got}")
    return supported


def runs_native(*tensors: torch.Tensor) -> bool:
    """Whether an op on these CPU tensors runs the fused C loops (``approxbp.ops.native``): the backend allows them
    and they take the tensors; never while torch.compile traces (a graph cannot call them; custom ops run their
    implementation after tracing).  Forced (``use_backend("native")``) where they are not built: ValueError."""
    if _backend not in ("auto", "native") or torch.compiler.is_compiling():
        return False
    from approxbp.ops import native

    if _backend == "native" and not native.available():
        raise ValueError("use_backend('native'): the C loops are not built here (no C compiler, a failed build, or "
                         "APPROXBP_NATIVE=0); see approxbp.ops.native")
    return native.takes(*tensors)


def kernel(module: str, name: str):
    """The host function (or constant) ``name`` of ``approxbp.kernels.<module>``."""
    return getattr(importlib.import_module(f"approxbp.kernels.{module}"), name)


def contiguous(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The tensors made contiguous (None stays None): what every custom op does first."""
    return tuple(None if t is None else t.contiguous() for t in tensors)


def check_float_tensor(name: str, t: torch.Tensor) -> None:
    """TypeError naming ``name`` unless ``t`` is a tensor of one of FLOAT_DTYPES (float8 and other floating dtypes
    are refused: no op computes in them); every op checks its inputs before dispatch."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32, float64), got {t.dtype}")


def block_size(n: int) -> int:
    """Elements in the largest block of ``n`` (BLOCK_ELEMENTS is read at call time)."""
    return min(n, BLOCK_ELEMENTS)


def blocks(n: int, size: int | None = None) -> Iterator[tuple[int, int]]:
    """[start, stop) of consecutive blocks of ``size`` (default BLOCK_ELEMENTS) elements covering range(n)."""
    size = size or BLOCK_ELEMENTS
    return ((s, min(s + size, n)) for s in range(0, n, size))


def row_blocks(rows: int, width: int) -> Iterator[tuple[int, int]]:
    """[start, stop) of consecutive blocks of whole rows, about BLOCK_ELEMENTS elements each (at least one row)."""
    return blocks(rows, max(1, BLOCK_ELEMENTS // max(width, 1)))
