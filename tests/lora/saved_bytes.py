"""Bytes autograd saves for one training step of the tiny LLaMA / RoBERTa / ViT models with LoRA r8, dropout 0.1
(adapters and every nn.Dropout), unconverted and converted with and without the packed paths:
``python tests/lora/saved_bytes.py`` (prints a Markdown table)."""

from __future__ import annotations

import copy
import warnings

import torch
from lora_models import TARGETS, build, loss
from peft import LoraConfig, get_peft_model
from torch import nn

from approxbp.conversion import convert
from approxbp.saved import record_saved

VARIANTS = {"peft (unconverted)": None, "Approx-BP + MS-BP, lora=None, dropout=None": dict(lora=None, dropout=None),
            "Approx-BP + MS-BP, packed (default)": {}, "MS-BP only, lora=None, dropout=None":
                dict(approx=None, lora=None, dropout=None), "MS-BP only, packed": dict(approx=None)}


def model_r8(name: str) -> tuple[nn.Module, dict]:
    model, inputs = build(name)
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.p = 0.1
    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS[name], lora_dropout=0.1)
    return get_peft_model(model, config).train(), inputs


def saved_bytes(model: nn.Module, inputs: dict) -> int:
    torch.manual_seed(0)
    with record_saved(model) as saved:
        loss(model, inputs)
    return saved.bytes


def main() -> None:
    warnings.simplefilter("ignore")
    print("| model | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 1) + "|")
    for name in ("llama", "roberta-mlm", "vit"):
        model, inputs = model_r8(name)
        row = []
        for options in VARIANTS.values():
            twin = copy.deepcopy(model)
            if options is not None:
                convert(twin, **options)
            row.append(saved_bytes(twin, inputs))
        print(f"| {name} | " + " | ".join(f"{b}" for b in row) + " |")


if __name__ == "__main__":
    main()
