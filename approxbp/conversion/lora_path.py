"""The packed LoRA and dropout paths of ``approxbp.convert`` (options ``lora="packed"`` and ``dropout="packed"``).

- ``lora="packed"``: every peft ``lora.Linear`` over an ``nn.Linear`` gets ``approxbp.modules.lora.LoraForward`` as its
  forward (peft's bitsandbytes ``lora.bnb.Linear4bit``: ``LoraForward4bit``): each adapter saves its input x (shared
  with the base layer, the MS norm or the other adapters on x), A's output and a 1-bit dropout mask, instead of a
  dropped copy of x and a byte (CUDA) or element (CPU) per mask entry.
  Folded adapters (``AffineInputLinear`` / ``AffineThenDropout``) save the norm's output y, not gamma * y + beta.
  Over a 4-bit base (which keeps no input) at the down projection of a rule's gated MLP, whose input (the gated
  product) no other op keeps, the adapters save the copy their A matmul reads when that is narrower than x
  (``LoraForward4bit``'s ``input_kept=False``; peft's QLoRA recipe makes that product fp32, its matmul reads bf16).
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
from collections.abc import Callable, Sequence
from functools import partial

from torch import nn

from approxbp.conversion.plan import Plan, Swap, resolve
from approxbp.conversion.report import Change, Skip
from approxbp.conversion.rules import Rule, matches
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


def gated_down_layers(model: nn.Module, rules: Sequence[Rule]) -> set[int]:
    """ids of the down projections of the gated MLPs ``rules`` name in ``model``: their input is the gated product,
    which the MLP's other ops do not keep (act(gate) * up keeps act(gate) and up, the fused op gate and up)."""
    downs = set()
    for _, block in model.named_modules():
        for rule in rules:
            if rule.gated is not None and matches(rule, type(block)):
                down = resolve(block, f"{rule.gated.path}.{rule.gated.down}")
                if down is not None:
                    downs.add(id(down))
    return downs


def extend_plan(model: nn.Module, plan: Plan, lora: str | None, dropout: str | None,
                rules: Sequence[Rule] = ()) -> tuple[list[Change], list[Skip], list[tuple[nn.Module, Callable]]]:
    """(changes, skips, (LoRA layer, forward factory) to install); appends the dropout swaps to ``plan.swaps``.
    ``rules``: the conversion's rules, which name the gated MLPs' down projections.  Touches nothing."""
    changes, skips, layers = [], [], []
    swapped = {id(s.original) for s in plan.swaps}
    forwards = _forwards() if lora else {}
    downs = gated_down_layers(model, rules) if lora else set()
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
            forward = forwards[type(module)]
            unkept = forward is LoraForward4bit and id(module) in downs
            layers.append((module, partial(forward, input_kept=False) if unkept else forward))
            saves = "x or, where narrower, A's matmul input" if unkept else "x"
            changes.append(Change(name, "lora", type(module).__name__,
                                  f"LoraForward: saves {saves}, A's output and a 1-bit dropout mask"))
    return changes, skips, layers


def install(layers: list[tuple[nn.Module, Callable]]) -> None:
    """Install (layer, forward factory) pairs as ``extend_plan`` lists them."""
    for layer, forward in layers:
        layer.__dict__["forward"] = forward(layer)


def uninstall(model: nn.Module) -> None:
    """peft's forward back on every LoRA layer of ``model`` that ``install`` changed."""
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), LoraForward):
            del module.__dict__["forward"]
