"""The packed LoRA and dropout paths of ``approxbp.convert`` (options ``lora="packed"`` and ``dropout="packed"``).

- ``lora="packed"``: every peft ``lora.Linear`` over an ``nn.Linear`` gets ``approxbp.modules.lora.LoraForward`` as its
  forward (peft's bitsandbytes ``lora.bnb.Linear4bit``: ``LoraForward4bit``): each adapter saves its input x (shared
  with the base layer, the MS norm or the other adapters on x), A's output and a 1-bit dropout mask, instead of a
  dropped copy of x and a byte (CUDA) or element (CPU) per mask entry.
  Folded adapters (``AffineInputLinear`` / ``AffineThenDropout``) save the norm's output y, not gamma * y + beta.
  LoRA layers whose adapters the op does not reproduce (DoRA and other variants, lora_bias, other A/B/dropout
  modules) keep peft's forward and are listed in ``report.skipped``; other peft layer types (Embedding, Conv,
  8-bit) are left to peft.
- ``dropout="packed"``: every ``nn.Dropout`` (exact class, p > 0) outside LoRA adapters becomes ``PackedDropout``
  (same p and inplace): torch's mask, saved as bits.

Both give the same outputs, gradients and RNG draws as the modules they replace, also under autocast
(``tests/lora``).  What they change is listed in ``report.packed``; ``revert`` puts peft's forward and the nn.Dropout
modules back.
"""

from __future__ import annotations

import sys

from torch import nn

from approxbp.conversion.plan import Plan, Swap
from approxbp.conversion.report import Change, Skip
from approxbp.modules.dropout import PackedDropout
from approxbp.modules.lora import LoraForward, LoraForward4bit, adapter_problem

MODES = (None, "packed")


def check(lora: str | None, dropout: str | None) -> None:
    for option, value in (("lora", lora), ("dropout", dropout)):
        if value not in MODES:
            raise ValueError(f"{option} must be None or 'packed', got {value!r}")


def _forwards() -> dict[type, type]:
    """peft LoRA layer class -> the forward installed on it (peft's bitsandbytes layers if bitsandbytes is there)."""
    if "peft" not in sys.modules:
        return {}
    lora = sys.modules["peft"].tuners.lora
    forwards = {lora.layer.Linear: LoraForward}
    bnb = sys.modules.get("peft.tuners.lora.bnb")
    if bnb is not None and hasattr(bnb, "Linear4bit"):
        forwards[bnb.Linear4bit] = LoraForward4bit
    return forwards


def _in_adapter(name: str) -> bool:
    return ".lora_dropout." in f".{name}."


def extend_plan(model: nn.Module, plan: Plan, lora: str | None,
                dropout: str | None) -> tuple[list[Change], list[Skip], list[tuple[nn.Module, type]]]:
    """(changes, skips, (LoRA layer, forward class) to install); appends the dropout swaps to ``plan.swaps``.
    Touches nothing."""
    changes, skips, layers = [], [], []
    swapped = {id(s.original) for s in plan.swaps}
    forwards = _forwards() if lora else {}
    for name, module in model.named_modules():
        if dropout and type(module) is nn.Dropout and module.p > 0 and not _in_adapter(name) \
                and id(module) not in swapped:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            plan.swaps.append(Swap(parent, attr, module, PackedDropout.from_dropout(module)))
            changes.append(Change(name, "dropout", "Dropout", f"PackedDropout(p={module.p}): 1-bit mask"))
        elif type(module) in forwards:
            if not isinstance(module.get_base_layer(), nn.Linear):
                skips.append(Skip(name, type(module).__name__, "its base layer is not an nn.Linear", expected=True))
                continue
            problems = [p for a in module.lora_A if (p := adapter_problem(module, a))]
            if problems:
                skips.append(Skip(name, type(module).__name__, f"peft's forward kept: {problems[0]}", expected=True))
                continue
            layers.append((module, forwards[type(module)]))
            changes.append(Change(name, "lora", type(module).__name__,
                                  "LoraForward: saves x, A's output and a 1-bit dropout mask"))
    return changes, skips, layers


def install(layers: list[tuple[nn.Module, type]]) -> None:
    """Install (layer, forward class) pairs as ``extend_plan`` lists them."""
    for layer, forward in layers:
        layer.__dict__["forward"] = forward(layer)


def uninstall(model: nn.Module) -> None:
    """peft's forward back on every LoRA layer of ``model`` that ``install`` changed."""
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), LoraForward):
            del module.__dict__["forward"]
