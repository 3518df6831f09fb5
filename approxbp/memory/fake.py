"""Run paper-scale models without allocating: build on the ``meta`` device, then give every parameter and buffer an
uninitialised *fake* CPU tensor under ``FakeTensorMode``.  Fake CPU tensors take the same kernel decisions as real
CPU tensors (plain ``meta`` tensors send ``scaled_dot_product_attention`` to its math path, which keeps the attention
probabilities a CPU or GPU run would not keep), so a fake run saves exactly what a real CPU run of the same shapes
saves; ``tests/memory`` checks that on small shapes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv


@contextmanager
def fake_mode() -> Iterator[FakeTensorMode]:
    """A FakeTensorMode with a shape environment (ops with data-dependent output sizes, such as the guarded features
    of ``MSLayerNormAffine``, get a symbolic size) that accepts real constants (the ops' cached step tables)."""
    with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv()) as mode:
        yield mode


def materialize(model: nn.Module, device: str = "cpu") -> nn.Module:
    """Replace every parameter and buffer (meta tensors) by an uninitialised tensor of the same shape, dtype and
    ``requires_grad`` on ``device``: fake under ``fake_mode()``; 4-bit weights with their quantization state
    (``approxbp.memory.quantize``).  In place; returns ``model``."""
    for module in model.modules():
        for name, p in module._parameters.items():
            if type(p).__name__ == "Params4bit":  # a 4-bit weight and its quantization state (QLoRA)
                from approxbp.memory.quantize import materialize_4bit

                module._parameters[name] = materialize_4bit(p, device)
            elif p is not None:
                module._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                                        p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)
    return model
