"""Which implementation the ops run: Triton kernels for CUDA tensors, the exact pure-PyTorch reference otherwise.

``use_backend("torch")`` forces the reference and ``use_backend("triton")`` forces the kernels (on CPU that needs
``TRITON_INTERPRET=1`` set before ``approxbp.kernels`` modules are first imported, as the tests do)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

BACKENDS = ("auto", "torch", "triton")
_backend = "auto"


def get_backend() -> str:
    return _backend


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """"auto": Triton for CUDA tensors, reference otherwise; "torch": always the reference; "triton": always Triton."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    previous, _backend = _backend, name
    try:
        yield
    finally:
        _backend = previous


def wants_triton(x: torch.Tensor) -> bool:
    """Whether the current backend sends ``x`` to Triton (callers then check the kernel supports it)."""
    return _backend == "triton" or (_backend == "auto" and x.is_cuda)


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensor(name: str, t: torch.Tensor) -> None:
    """TypeError naming ``name`` unless ``t`` is a tensor of one of FLOAT_DTYPES (float8 and other floating dtypes
    are refused: no op computes in them); every op checks its inputs before dispatch."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32, float64), got {t.dtype}")
