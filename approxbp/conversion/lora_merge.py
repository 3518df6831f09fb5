"""Merging LoRA adapters into a folded base layer, for peft's ``merge``, ``merge_adapter``, ``merge_and_unload`` and
``unmerge``.

A converted adapter still reads z = gamma * y + beta (``approxbp.conversion.fold``), while its base layer now holds
W' = W diag(gamma), b' = b + W beta and reads y.  Merged into it, the adapter's delta s B A z becomes

    W' += s B A diag(gamma),        b' += s B A beta,

and unmerging subtracts both.  ``convert`` gives each folded LoRA layer these as instance attributes (``merge``,
``unmerge``, ``get_delta_weight``: peft's own methods around the change, so safe_merge, lora_bias and the merged
bookkeeping stay peft's) and ``revert`` removes them.  After a merge, ``revert`` unfolds the merged weights, so the
reverted model holds W + s B A and b, which is the original model with the adapter merged.  An adapter added after the
conversion reads y, not z; merging it (or running it) is refused: on a folded LoRA layer by the methods above; on a
folded plain linear layer that peft wraps after the conversion (``get_peft_model`` on a converted model) by a
``merge`` refusing on the wrapper, which ``watch`` puts there when the wrapper takes the folded layer as its base (a
global module registration hook, active while a converted model holds folded layers).
"""

from __future__ import annotations

import sys
import weakref

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from approxbp.conversion.layers import AffineInputLinear, AffineThenDropout

METHODS = ("get_delta_weight", "merge", "unmerge")


def folded_affine(layer: nn.Module, adapter: str) -> nn.Module | None:
    """The module holding the gamma/beta adapter ``adapter`` of a LoRA layer reads through (None: it reads y)."""
    lora_a, dropout = layer.lora_A[adapter], layer.lora_dropout[adapter]
    return lora_a if isinstance(lora_a, AffineInputLinear) else dropout if isinstance(dropout, AffineThenDropout) \
        else None


def late_adapters_message(name: str, adapters: list[str]) -> str:
    return (f"approxbp: LoRA adapter(s) {', '.join(map(repr, adapters))} of {name} were added after approxbp.convert: "
            "they read the folded norm's output y instead of gamma * y + beta.  Add adapters before converting "
            "(approxbp.revert(model), add them, approxbp.convert(model)).")


class _FoldedMethod:
    """A method of one folded LoRA layer (an object, not a closure, so that deepcopy and pickle follow the layer)."""

    def __init__(self, layer: nn.Module, name: str):
        self.layer, self.name = layer, name

    def wrapper(self, adapter: str) -> nn.Module:
        wrapper = folded_affine(self.layer, adapter)
        if wrapper is None:
            raise RuntimeError(late_adapters_message(self.name, [adapter]))
        return wrapper

    def shift_bias(self, adapter: str, sign: float) -> None:
        """b' += sign * s B A beta (the base layer has a bias whenever beta exists: the fold made sure of it)."""
        layer, beta = self.layer, self.wrapper(adapter).affine()[1]
        if beta is None:
            return
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        shift = (b.double() @ (a.double() @ beta.to(a.device, torch.float64))) * (sign * layer.scaling[adapter])
        bias = layer.get_base_layer().bias
        with torch.no_grad():
            bias.add_(shift.to(bias.device, bias.dtype))


class FoldedDeltaWeight(_FoldedMethod):
    """peft's delta s B A times diag(gamma): the adapter's delta for the folded weight W'."""

    def __call__(self, adapter: str) -> Tensor:
        gamma = self.wrapper(adapter).affine()[0]
        delta = type(self.layer).get_delta_weight(self.layer, adapter)
        return (delta.double() * gamma.to(delta.device, torch.float64)).to(delta.dtype)


class FoldedMerge(_FoldedMethod):
    """peft's merge (with the delta above), then b' += s B A beta for every adapter it merged."""

    def __call__(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        layer = self.layer
        for adapter in adapter_names if adapter_names is not None else layer.active_adapters:
            if adapter in layer.lora_A:
                self.wrapper(adapter)  # refuse before anything is merged
        before = list(layer.merged_adapters)
        type(layer).merge(layer, safe_merge=safe_merge, adapter_names=adapter_names)
        for adapter in layer.merged_adapters:
            if adapter not in before:
                self.shift_bias(adapter, 1.0)


class FoldedUnmerge(_FoldedMethod):
    """peft's unmerge (with the delta above), then b' -= s B A beta for every adapter it unmerged."""

    def __call__(self) -> None:
        layer = self.layer
        before = list(layer.merged_adapters)
        type(layer).unmerge(layer)
        for adapter in before:
            if adapter not in layer.merged_adapters:
                self.shift_bias(adapter, -1.0)


def install(layer: nn.Module, name: str) -> None:
    """Give the folded LoRA layer ``layer`` (qualified name ``name``) the merge methods above."""
    for method, cls in zip(METHODS, (FoldedDeltaWeight, FoldedMerge, FoldedUnmerge), strict=True):
        layer.__dict__[method] = cls(layer, name)


def uninstall(layer: nn.Module) -> None:
    for method in METHODS:
        layer.__dict__.pop(method, None)


_WATCHED: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()  # folded plain linear -> name
_HOOK: list[RemovableHandle] = []


class LateMerge:
    """``merge`` of a peft layer wrapped around a folded plain linear layer after the conversion: refuses while the
    layer is folded (its adapters read y, not gamma * y + beta), else runs peft's merge."""

    def __init__(self, layer: nn.Module, linear: nn.Linear):
        self.layer, self.linear = layer, weakref.ref(linear)

    def __call__(self, *args, **kwargs) -> None:
        name = _WATCHED.get(self.linear())
        if name is not None:
            raise RuntimeError(late_adapters_message(name, list(getattr(self.layer, "lora_A", {}))))
        type(self.layer).merge(self.layer, *args, **kwargs)


def _registered(parent: nn.Module, attr: str, child: nn.Module) -> None:
    """Global module registration hook: a peft tuner layer taking a watched folded layer as its base."""
    if attr == "base_layer" and child in _WATCHED and "peft" in sys.modules:
        if isinstance(parent, sys.modules["peft"].tuners.tuners_utils.BaseTunerLayer):
            parent.__dict__["merge"] = LateMerge(parent, child)


def watch(linears: dict[str, nn.Module]) -> None:
    """Watch the folded plain linear layers ``{qualified name: layer}`` (see the module docstring)."""
    _WATCHED.update({linear: name for name, linear in linears.items()})
    if linears and not _HOOK:
        _HOOK.append(torch.nn.modules.module.register_module_module_registration_hook(_registered))


def unwatch(linears: list[nn.Module]) -> None:
    for linear in linears:
        _WATCHED.pop(linear, None)
    if not _WATCHED and _HOOK:
        _HOOK.pop().remove()
