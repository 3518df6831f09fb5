"""Tiny peft LoRA models for the packed LoRA / dropout tests (built on ``tests/convert/convert_models``), and one
training step's loss, gradients and saved bytes under a fixed seed."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[1] / "convert"))
from convert_models import build, grads, loss, with_lora

from approxbp.saved import record_saved

TARGETS = {"llama": ["q_proj", "v_proj", "up_proj", "down_proj"], "roberta-mlm": ["query", "value", "dense"],
           "vit": ["q_proj", "v_proj", "fc1", "fc2"]}
__all__ = ["TARGETS", "build", "grads", "lora_model", "loss", "step", "with_lora"]


def lora_model(name: str, dropout: float, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, dict]:
    """The tiny model ``name`` with LoRA (r 4, ``dropout``) on ``TARGETS[name]`` and every nn.Dropout at ``dropout``,
    in ``dtype``, in training mode."""
    model, inputs = build(name, dtype=dtype)
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.p = dropout
    return with_lora(model, TARGETS[name], dropout).to(dtype).train(), inputs


def step(model: nn.Module, inputs: dict, seed: int = 3) -> tuple[float, dict, int, torch.Tensor]:
    """(loss, gradients, bytes saved for backward excluding parameters, the next random numbers) of one step from
    ``seed``; gradients are cleared after."""
    torch.manual_seed(seed)
    with record_saved(model) as saved:
        value = loss(model, inputs)
    if value.requires_grad:  # not with every adapter disabled
        value.backward()
    result = value.item(), grads(model), saved.bytes, torch.rand(4)
    model.zero_grad(set_to_none=True)
    return result


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (a zero b counts as 1e-30)."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
