"""Where a kernel runs: compiled on the GPU for GPU tensors, in Triton's interpreter (numpy, on the host) for CPU ones.

Under ``TRITON_INTERPRET=1`` (read by triton when a kernel is defined) every @triton.jit function is an interpreted
one and the process can only interpret.  Without it, a process holds compiled-mode JIT functions, and Triton's
interpreter still runs one when it is wrapped in an ``InterpretedFunction`` and every @triton.jit function it calls
(the kernels' helpers and triton.language's own: tl.sum, tl.sigmoid, tl.zeros, ...) runs interpreted too: during a
host launch ``JITFunction.__call__``, which otherwise refuses calls from outside a kernel, runs its callee through
the interpreter.  So one process runs the same kernels compiled on CUDA tensors and interpreted on CPU tensors.

The interpreter runs kernels by patching triton.language (builtins, tensor methods) with numpy versions.  Its grid
launch undoes its own patches, but a call of an interpreted helper patches again and never undoes it, which would
leave the compiler of this process broken after the first CPU launch.  So a host launch patches triton.language and
triton.language.core once itself, calls helpers without patching, and restores everything when it ends; launches
hold one lock, since the patches are process-wide."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction, _patch_lang
from triton.runtime.jit import JITFunction

_INTERPRETED: dict[Callable, InterpretedFunction] = {}  # Python function -> its interpreted form
_LOCK = threading.RLock()
_LANGUAGE = SimpleNamespace(__globals__={"tl": tl, "core": tl.core})  # what _patch_lang patches, from a "function"


def _interpreted(fn: Callable) -> InterpretedFunction:
    found = _INTERPRETED.get(fn)
    if found is None:
        found = _INTERPRETED[fn] = InterpretedFunction(fn)
    return found


def _call_interpreted(self: JITFunction, *args, **kwargs):
    """A @triton.jit helper called from an interpreted kernel: its interpreted body (triton.language is patched)."""
    return _interpreted(self.fn).rewrite()(*args, **kwargs)


@contextmanager
def _interpreting() -> Iterator[None]:
    scope = _patch_lang(_LANGUAGE)
    original = JITFunction.__call__
    JITFunction.__call__ = _call_interpreted
    try:
        yield
    finally:
        JITFunction.__call__ = original
        scope.restore()


class _OnHost:
    """``kernel[grid](*args, **kwargs)`` run by the interpreter (launch options such as num_warps are ignored)."""

    def __init__(self, kernel: JITFunction):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with _LOCK, _interpreting():
                return _interpreted(self.kernel.fn)[grid](*args, **kwargs)

        return launch


def on_device(kernel, tensor: torch.Tensor):
    """What to launch ``kernel`` with for ``tensor``'s device, as ``on_device(kernel, x)[grid](...)``: the kernel
    itself for GPU tensors (and for an already interpreted kernel), its interpreted form for CPU tensors."""
    if isinstance(kernel, JITFunction) and tensor.device.type == "cpu":
        return _OnHost(kernel)
    return kernel
