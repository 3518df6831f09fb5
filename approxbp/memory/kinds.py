"""Which kind of op a saved tensor belongs to, from the module that was running and the torch function that saved it.

Kinds, in attribution priority (a storage saved by ops of several kinds is charged to the first kind of this list):

    linear      inputs of linear layers (and of a LoRA-wrapped layer's adapter A when it reads the layer's input)
    lora        LoRA intermediates: A's output saved by B, the dropped-out copy of the input saved by A, and
                weights an adapter builds in the forward (MS-BP's fold: A diag(gamma), weight-sized)
    activation  activation inputs or codes, and the gated product of a gated MLP (LLaMA's act(gate) * up)
    attention   what the attention op keeps (q, k, v, output, log-sum-exp; probabilities on math/eager paths)
    norm        LayerNorm / RMSNorm inputs, statistics and (MS-BP) outputs
    dropout     dropout masks
    checkpoint  the inputs activation checkpointing keeps of each checkpointed block (its recomputation's inputs)
    other       everything else (embedding indices, the loss)

Linear comes first because a linear layer keeps its input for the weight gradient whatever else reads it: when
MS-BP's norm and the next linear keep one tensor, the norm is charged only for what it keeps beyond that (its rstd).
"""

from __future__ import annotations

import re

from torch import nn

KINDS = ("linear", "lora", "activation", "attention", "norm", "dropout", "checkpoint", "other")
KIND_LABELS = {
    "linear": "linear inputs",
    "lora": "LoRA intermediates",
    "activation": "activation",
    "attention": "attention",
    "norm": "norm",
    "dropout": "dropout masks",
    "checkpoint": "checkpointed inputs",
    "other": "other",
}
DROPOUT_FUNCTIONS = frozenset({"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_dropout",
                               "feature_alpha_dropout", "native_dropout"})

_LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
_ACTIVATION_TYPES = (nn.GELU, nn.SiLU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.GLU)
_NORM_NAME = re.compile(r"Norm")
_ACTIVATION_NAME = re.compile(r"GELU|GeLU|SiLU|ReLU|Swish|GLU|Activation|ApproxAct|Tanh|Sigmoid|Mish")
_ATTENTION_NAME = re.compile(r"Attention")
_MLP_NAME = re.compile(r"MLP|Mlp|Intermediate|FeedForward")


def is_lora_wrapper(module: nn.Module) -> bool:
    """A peft LoRA layer (duck-typed, so peft need not be installed): a base layer plus lora_A / lora_B adapters."""
    return hasattr(module, "base_layer") and isinstance(getattr(module, "lora_A", None), nn.ModuleDict)


def module_kind(module: nn.Module) -> str | None:
    """"linear", "dropout", "norm", "activation", "attention", "mlp", "lora_wrapper" or None (a container)."""
    name = type(module).__name__
    if is_lora_wrapper(module):
        return "lora_wrapper"
    if isinstance(module, _LINEAR_TYPES) or name == "Conv1D":
        return "linear"
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return "dropout"
    if isinstance(module, _NORM_TYPES) or _NORM_NAME.search(name):
        return "norm"
    if isinstance(module, _ACTIVATION_TYPES) or _ACTIVATION_NAME.search(name):
        return "activation"
    if _ATTENTION_NAME.search(name):
        return "attention"
    if _MLP_NAME.search(name):
        return "mlp"
    return None


def classify(function: str | None, stack: tuple[nn.Module, ...], is_lora_input: bool) -> str:
    """The kind of one save: ``function`` is the outermost torch function running (None between functions),
    ``stack`` the modules whose forward is running (outermost first), ``is_lora_input`` whether the saved storage
    is the input of a LoRA-wrapped layer.

    Dropout functions give "dropout" wherever they run.  Otherwise the innermost module with a kind decides; a
    linear inside a LoRA wrapper that is not its base layer is an adapter (A or B): what it keeps is the layer's
    input ("linear") or an adapter intermediate ("lora").  Ops written directly in an MLP's forward (the gated
    product) are "activation"."""
    if function in DROPOUT_FUNCTIONS:
        return "dropout"
    for depth in range(len(stack) - 1, -1, -1):
        kind = module_kind(stack[depth])
        if kind is None:
            continue
        if kind == "lora_wrapper" or (kind == "linear" and depth and _is_adapter(stack[depth - 1], stack[depth])):
            return "linear" if is_lora_input else "lora"
        return "activation" if kind == "mlp" else kind
    return "other"


def _is_adapter(parent: nn.Module, module: nn.Module) -> bool:
    return is_lora_wrapper(parent) and module is not parent.base_layer
