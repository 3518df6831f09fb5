"""Where a kernel runs: compiled on the GPU for GPU tensors, in Triton's interpreter (numpy, on the host) for CPU ones.

Under ``TRITON_INTERPRET=1`` (read by triton when a kernel is defined) every @triton.jit function is an interpreted
one and the process can only interpret.  Without it, a process holds compiled-mode JIT functions, and Triton's
interpreter still runs one when it is wrapped in an ``InterpretedFunction`` and every @triton.jit function it calls
(the kernels' helpers and triton.language's own: tl.sum, tl.sigmoid, tl.zeros, ...) runs interpreted too: during a
host launch ``JITFunction.__call__``, which otherwise refuses calls from outside a kernel, runs its callee through
the interpreter.  So one process runs the same kernels compiled on CUDA tensors and interpreted on CPU tensors.
Host launches hold one lock: the interpreter patches triton.language while it runs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

_INTERPRETED: dict[Callable, InterpretedFunction] = {}  # Python function -> its interpreted form
_LOCK = threading.RLock()


def _interpreted(fn: Callable) -> InterpretedFunction:
    found = _INTERPRETED.get(fn)
    if found is None:
        found = _INTERPRETED[fn] = InterpretedFunction(fn)
    return found


@contextmanager
def _jit_calls_interpreted() -> Iterator[None]:
    original = JITFunction.__call__
    JITFunction.__call__ = lambda self, *args, **kwargs: _interpreted(self.fn)(*args, **kwargs)
    try:
        yield
    finally:
        JITFunction.__call__ = original


class _OnHost:
    """``kernel[grid](*args, **kwargs)`` run by the interpreter (launch options such as num_warps are ignored)."""

    def __init__(self, kernel: JITFunction):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with _LOCK, _jit_calls_interpreted():
                return _interpreted(self.kernel.fn)[grid](*args, **kwargs)

        return launch


def on_device(kernel, tensor: torch.Tensor):
    """What to launch ``kernel`` with for ``tensor``'s device, as ``on_device(kernel, x)[grid](...)``: the kernel
    itself for GPU tensors (and for an already interpreted kernel), its interpreted form for CPU tensors."""
    if isinstance(kernel, JITFunction) and tensor.device.type == "cpu":
        return _OnHost(kernel)
    return kernel
