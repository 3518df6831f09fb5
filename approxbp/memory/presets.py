"""The paper's models and fine-tuning settings (from the official LowMemoryBP configs of Yang et al., ICML 2024),
built from configs written out here, so nothing is downloaded.

    preset          model (HF class)                    batch  seq   dtype  tuning  LoRA (rank, alpha, dropout, targets)
    vit-b           ViT-B/16, ViTForImageClassification  64    197   bf16   full    4, 4, 0.0, q/k/v/o/fc1/fc2 ("all")
    vit-l           ViT-L/16                              32    197   bf16   full    as vit-b
    llama-7b        LLaMA-7B, LlamaForCausalLM             4    640   bf16   lora    64, 16, 0.1, all seven linears
    llama-13b       LLaMA-13B                              4    640   bf16   lora    as llama-7b
    roberta-base    RoBERTa-base, ...ForSequenceClass.    32    256   fp32   lora    64, 16, 0.0, query/key
    roberta-large   RoBERTa-large                         32    256   fp32   lora    as roberta-base

ViT: CIFAR-100 head (100 classes), 224 px, batch 64 (ViT-L full tuning ran 32 x 2 accumulation steps, so 32 are in
memory at once); the paper trained with AMP (16-bit activations), profiled here as pure bf16.  LLaMA: QLoRA on
Alpaca, per-device batch 4, source 512 + target 128 tokens; ``--tuning lora`` profiles frozen bf16 base weights
(a frozen linear keeps no input, as a 4-bit one), ``--tuning qlora`` the NF4 stack itself
(``approxbp.memory.quantize``: fp32 norms and adapters as peft's recipe leaves them, bf16 autocast).  RoBERTa: GLUE
STS-B (one regression output), LoRA r 64 on query and key, fp32.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers imports torch: the CLI checks its input before either is imported
    from transformers import PretrainedConfig

TUNINGS = ("full", "lora", "lora-fa", "qlora", "frozen")


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: int
    dropout: float
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Preset:
    config: Callable[[], PretrainedConfig]
    batch: int
    seq: int
    dtype: str
    tuning: str
    lora: LoraSpec


class _Config:
    """A config written out as HF config fields; the transformers class is imported when the config is built."""

    def __init__(self, class_name: str, model_type: str, **fields):
        self.class_name, self.model_type, self.fields = class_name, model_type, fields

    def __call__(self) -> PretrainedConfig:
        import transformers

        return getattr(transformers, self.class_name)(**self.fields)


def _vit(hidden: int, layers: int, heads: int) -> _Config:
    return _Config("ViTConfig", "vit", hidden_size=hidden, num_hidden_layers=layers,
                   num_attention_heads=heads, intermediate_size=4 * hidden, image_size=224, patch_size=16,
                   num_labels=100)


def _llama(hidden: int, intermediate: int, layers: int, heads: int) -> _Config:
    return _Config("LlamaConfig", "llama", hidden_size=hidden, intermediate_size=intermediate,
                   num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, vocab_size=32000,
                   max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False)


def _roberta(hidden: int, layers: int, heads: int) -> _Config:
    return _Config("RobertaConfig", "roberta", hidden_size=hidden, num_hidden_layers=layers,
                   num_attention_heads=heads, intermediate_size=4 * hidden, vocab_size=50265,
                   max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                   num_labels=1)


_VIT_LORA = LoraSpec(4, 4, 0.0, ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"))
_LLAMA_LORA = LoraSpec(64, 16, 0.1, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
_ROBERTA_LORA = LoraSpec(64, 16, 0.0, ("query", "key"))

PRESETS: dict[str, Preset] = {
    "vit-b": Preset(_vit(768, 12, 12), 64, 197, "bf16", "full", _VIT_LORA),
    "vit-l": Preset(_vit(1024, 24, 16), 32, 197, "bf16", "full", _VIT_LORA),
    "llama-7b": Preset(_llama(4096, 11008, 32, 32), 4, 640, "bf16", "lora", _LLAMA_LORA),
    "llama-13b": Preset(_llama(5120, 13824, 40, 40), 4, 640, "bf16", "lora", _LLAMA_LORA),
    "roberta-base": Preset(_roberta(768, 12, 12), 32, 256, "fp32", "lora", _ROBERTA_LORA),
    "roberta-large": Preset(_roberta(1024, 24, 16), 32, 256, "fp32", "lora", _ROBERTA_LORA),
}

# LoRA targets for a config of a family without a preset, by model_type; others get q_proj, v_proj
_TARGETS = {"bert": ("query", "key")}


_NO_CLASS_TOKEN = ("swin", "swinv2", "siglip_vision_model")  # vision models whose blocks see only the patches


def class_tokens(config: PretrainedConfig) -> int:
    """Tokens a vision model adds to its patches: the class token (none for Swin and SigLIP)."""
    return 0 if config.model_type in _NO_CLASS_TOKEN else 1


def vision_tokens(config: PretrainedConfig) -> int:
    """Tokens a ViT-like model's first blocks see: patches plus the class token (Swin's first stage: patches)."""
    return (config.image_size // config.patch_size) ** 2 + class_tokens(config)


def resolve(model: str) -> tuple[str, Preset]:
    """(display name, preset) for a preset name or the path of an HF config.json (or of its folder).  A config gets
    the batch, dtype, tuning and LoRA of its family's presets (generic ones for other families) and, for a vision
    model, the sequence its image size gives."""
    if model in PRESETS:
        return model, PRESETS[model]
    if not os.path.exists(model):
        raise ValueError(f"unknown model {model!r}: neither a preset ({', '.join(PRESETS)}) nor an existing path "
                         f"to an HF config.json")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read an HF config from {model!r}: {e}") from None
    family = next((p for p in PRESETS.values() if p.config.model_type == config.model_type), None)
    if family is None:
        family = Preset(lambda: config, 8, 512, "fp32", "full",
                        LoraSpec(8, 16, 0.0, _TARGETS.get(config.model_type, ("q_proj", "v_proj"))))
    seq = vision_tokens(config) if hasattr(config, "image_size") else family.seq
    return model, Preset(lambda: config, family.batch, seq, family.dtype, family.tuning, family.lora)


def config_fields(model: str) -> dict:
    """The HF config fields ``--model`` names, read without transformers: a preset's, or those config.json holds
    (the class defaults of the fields it leaves out are not included)."""
    if model in PRESETS:
        config = PRESETS[model].config
        return {"model_type": config.model_type, **config.fields}
    if not os.path.exists(model):
        raise ValueError(f"unknown model {model!r}: neither a preset ({', '.join(PRESETS)}) nor an existing path "
                         f"to an HF config.json")
    path = os.path.join(model, "config.json") if os.path.isdir(model) else model
    try:
        with open(path, encoding="utf-8") as f:
            fields = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"cannot read an HF config from {model!r}: {e}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"cannot read an HF config from {model!r}: it holds a {type(fields).__name__}, not an object")
    return fields


_POSITIVE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "vocab_size", "image_size", "patch_size", "max_position_embeddings")


def check_fields(fields: Mapping) -> None:
    """Raise a one-line ValueError naming the field and its value when the shape fields cannot build a model:
    sizes must be positive integers, heads must divide hidden_size and key-value heads the heads."""
    for name in _POSITIVE_FIELDS:
        value = fields.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"config field {name} is {value!r}; expected a positive integer")
    hidden, heads, kv_heads = (fields.get(n) for n in ("hidden_size", "num_attention_heads", "num_key_value_heads"))
    if hidden is not None and heads is not None and hidden % heads:
        raise ValueError(f"config field hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise ValueError(f"config field num_attention_heads {heads} is not divisible by num_key_value_heads "
                         f"{kv_heads}")
