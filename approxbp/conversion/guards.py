"""Hooks that a converted model carries so that it cannot silently compute something else:

- ``FoldedReaderWatch`` (forward pre-hook on each folded linear layer): a peft adapter added after ``convert``
  (``get_peft_model``, ``add_adapter``) would read the folded norm's output y instead of gamma * y + beta; the
  forward refuses to run.  Skipped while ``torch.compile`` traces (the check is structural, done in eager runs).
- ``OriginalStateDictGuard`` (load_state_dict pre-hook on the converted model): the unconverted model's checkpoint
  holds the norms' gamma/beta and unfolded reader weights; loaded with ``strict=False`` it would put unfolded weights
  into folded layers.  A state_dict holding any key that only the unconverted model has is refused.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from approxbp.conversion.fold import lora_layer_class
from approxbp.conversion.lora_merge import folded_affine, late_adapters_message


def late_adapter_problem(name: str, reader: nn.Module | None, linear: nn.Linear) -> str | None:
    """Why ``reader`` (the module now where a folded linear layer's reader was) reads the wrong input, if it does."""
    if "peft" not in sys.modules:
        return None
    tuner = sys.modules["peft"].tuners.tuners_utils.BaseTunerLayer
    if not isinstance(reader, tuner) or reader.get_base_layer() is not linear:
        return None
    if not isinstance(reader, lora_layer_class()):
        return (f"approxbp: a peft {type(reader).__name__} adapter was added to {name} after approxbp.convert: it "
                "reads the folded norm's output y instead of gamma * y + beta.  Add adapters before converting.")
    late = [adapter for adapter in reader.lora_A if folded_affine(reader, adapter) is None]
    return late_adapters_message(name, late) if late else None


class FoldedReaderWatch:
    """Forward pre-hook of the folded linear layer read as ``parent.<attr>`` (qualified name ``name``)."""

    def __init__(self, name: str, parent: nn.Module, attr: str):
        self.name, self.parent, self.attr = name, parent, attr

    def __call__(self, linear: nn.Module, args: tuple) -> None:
        if torch.compiler.is_compiling():
            return
        problem = late_adapter_problem(self.name, getattr(self.parent, self.attr, None), linear)
        if problem:
            raise RuntimeError(problem)


class OriginalStateDictGuard:
    """load_state_dict pre-hook refusing the unconverted model's keys ``original_only`` (relative to the converted
    model: the folded norms' parameters)."""

    def __init__(self, original_only: list[str]):
        self.original_only = tuple(original_only)

    def __call__(self, module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
        found = [key for key in self.original_only if prefix + key in state_dict]
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise ValueError(f"approxbp: this state_dict is the unconverted model's: it holds {prefix + found[0]}"
                             f"{more}, of a norm approxbp.convert folded into the next linear layers, whose weights "
                             "here are unfolded.  Load it before approxbp.convert (or revert, load, convert again).")
