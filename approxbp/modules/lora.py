"""peft LoRA layers computing their adapters with ``approxbp.ops.lora_delta``: the same outputs and gradients, with a
1-bit dropout mask and no dropped copy of the input kept for backward.

``LoraForward(layer)`` is installed as the ``forward`` of one peft ``lora.Linear`` (an instance attribute, so
``revert`` removes it and peft's own forward comes back).  It runs what peft's forward runs in the plain case: the
base layer, then for each active adapter s * B A drop(x) (x cast to A's dtype), summed, in the base result's dtype;
the dropout masks are drawn in the same order and the same way as peft's nn.Dropout modules draw them, so a seeded
run gives the same masks.  Under autocast it is peft's forward under autocast: x cast to A's dtype and dropped
there, A's and B's matmuls in the autocast dtype, gradients in the weights' dtypes (``lora_delta``).  Every other
case goes to peft's forward: adapters disabled or merged, ``adapter_names`` or variant arguments, any active adapter
that ``adapter_problem`` names (DoRA and other variants, lora_bias, A or B of another type, adapters of different
dtypes) and fp64 under autocast (which autocast leaves alone).

``LoraForward4bit`` does the same for peft's bitsandbytes ``lora.bnb.Linear4bit`` (QLoRA), whose base keeps no input.
Built with ``input_kept=False`` (``approxbp.conversion.lora_path`` does so for the down projection of a gated MLP,
whose input, the gated product, no other op keeps) its adapters save the copies their A matmuls read (``lora_delta``'s
``save_input=False``) instead of x, when those are fewer bytes: under bf16 autocast with peft's fp32 product, one
adapter keeps 2 bytes per element instead of 4; the step is the same to the bit.
``adapter_input`` is the hook for further LoRA layer types: it reads what an adapter computes on its input (A's
weight, gamma, beta, dropout probability, training) from the modules peft calls (lora_A, lora_dropout) and the
folded-norm wrappers ``approxbp.conversion.layers`` puts there (``approxbp.conversion.quantized`` puts the same ones
on 4-bit readers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from approxbp.conversion.layers import AffineInputLinear, AffineThenDropout
from approxbp.modules.dropout import PackedDropout
from approxbp.ops.lora_delta import compute_dtype, lora_delta


@dataclass
class AdapterInput:
    """What adapter's A reads: A drop(gamma * x + beta) (gamma, beta None: A drop(x)); ``p`` applied in training."""

    weight: Tensor
    gamma: Tensor | None
    beta: Tensor | None
    p: float
    training: bool


def _dropout_p(dropout: nn.Module) -> float | None:
    """The probability of a dropout module ``lora_delta`` reproduces (None: another module)."""
    if type(dropout) is nn.Identity:
        return 0.0
    return float(dropout.p) if type(dropout) in (nn.Dropout, PackedDropout) else None


def adapter_problem(layer: nn.Module, adapter: str) -> str | None:
    """Why ``adapter`` of the peft LoRA layer cannot run through ``lora_delta`` (None: it can)."""
    if adapter in getattr(layer, "lora_variant", {}):
        return f"adapter {adapter!r} is a LoRA variant (DoRA, ...)"
    if layer.lora_bias.get(adapter, False):
        return f"adapter {adapter!r} has lora_bias"
    a, b, dropout = layer.lora_A[adapter], layer.lora_B[adapter], layer.lora_dropout[adapter]
    if type(a) not in (nn.Linear, AffineInputLinear) or a.bias is not None:
        return f"adapter {adapter!r}'s A is a {type(a).__name__} with{'' if a.bias is not None else 'out'} bias"
    if type(b) is not nn.Linear or b.bias is not None:
        return f"adapter {adapter!r}'s B is not a bias-free nn.Linear"
    inner = dropout.dropout if isinstance(dropout, AffineThenDropout) else dropout
    if _dropout_p(inner) is None:
        return f"adapter {adapter!r}'s dropout is a {type(inner).__name__}"
    return None


def adapter_input(layer: nn.Module, adapter: str) -> AdapterInput:
    a, dropout = layer.lora_A[adapter], layer.lora_dropout[adapter]
    gamma = beta = None
    if isinstance(a, AffineInputLinear):
        gamma, beta = a.affine()
    elif isinstance(dropout, AffineThenDropout):
        gamma, beta = dropout.affine()
        dropout = dropout.dropout
    return AdapterInput(a.weight, gamma, beta, _dropout_p(dropout), dropout.training)


def _autocast(x: Tensor) -> bool:
    device_type = x.device.type
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


class LoraForward:
    """The ``forward`` of one peft lora.Linear (an object, not a closure, so that deepcopy and pickle follow it)."""

    def __init__(self, layer: nn.Module, input_kept: bool = True):
        self.layer, self.input_kept = layer, input_kept

    def plain(self, x: Tensor, args: tuple, kwargs: dict) -> list[str] | None:
        """The active adapters when every one runs through ``lora_delta`` here, else None."""
        layer = self.layer
        if args or kwargs or layer.disable_adapters or layer.merged:
            return None
        adapters = [a for a in layer.active_adapters if a in layer.lora_A]
        if any(adapter_problem(layer, a) for a in adapters):
            return None
        dtypes = {layer.lora_A[a].weight.dtype for a in adapters}
        if len(dtypes) > 1 or (dtypes != {x.dtype} and not getattr(layer, "cast_input_dtype_enabled", True)):
            return None
        if torch.float64 in dtypes | {x.dtype} and _autocast(x):  # autocast leaves fp64 alone: peft's forward
            return None
        return adapters

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        layer = self.layer
        adapters = self.plain(x, args, kwargs)
        if adapters is None:
            return type(layer).forward(layer, x, *args, **kwargs)
        result = layer.base_layer(x)
        dtype = result.dtype
        for adapter in adapters:
            given = adapter_input(layer, adapter)
            result = result + lora_delta(x, given.weight, layer.lora_B[adapter].weight, layer.scaling[adapter],
                                         given.p, given.training, given.gamma, given.beta)
        return result.to(dtype)


class LoraForward4bit(LoraForward):
    """The same for peft's bitsandbytes ``lora.bnb.Linear4bit``, in the order its forward adds: the base result
    cloned, each delta cast to the result's dtype before it is added.  Where peft's ``torch.is_autocast_enabled()``
    (CUDA autocast) is on, peft casts neither x nor the delta: x is dropped in its own dtype, the delta added as is."""

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        layer = self.layer
        adapters = self.plain(x, args, kwargs)
        if adapters is None:
            return type(layer).forward(layer, x, *args, **kwargs)
        result = layer.base_layer(x).clone()
        converts = not torch.is_autocast_enabled()  # peft's test, as written there
        compute = compute_dtype(x, layer.lora_A[adapters[0]].weight) if adapters else x.dtype
        save_input = self.input_kept or len(adapters) * compute.itemsize >= x.element_size()
        for adapter in adapters:
            given = adapter_input(layer, adapter)
            delta = lora_delta(x, given.weight, layer.lora_B[adapter].weight, layer.scaling[adapter], given.p,
                               given.training, given.gamma, given.beta, None if converts else x.dtype, save_input)
            result = result + (delta.to(result.dtype) if converts else delta)
        return result
