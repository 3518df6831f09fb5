"""Tiny configs of the three families the profiler knows, and a helper that profiles one of them."""

from __future__ import annotations

from dataclasses import replace

import pytest
from transformers import LlamaConfig, RobertaConfig, ViTConfig

from approxbp.memory.measurement import Setting, measure
from approxbp.memory.presets import LoraSpec

# ViT: d 32, 2 heads, MLP 64, 16 px / 4 px patches -> 17 tokens
VIT = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
       "image_size": 16, "patch_size": 4, "num_labels": 5}
LLAMA = {"hidden_size": 32, "intermediate_size": 80, "num_hidden_layers": 3, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 50}
ROBERTA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
           "vocab_size": 50, "num_labels": 1, "max_position_embeddings": 40, "type_vocab_size": 1}

FAMILIES = {
    "vit": (lambda: ViTConfig(**VIT), 17, LoraSpec(4, 4, 0.0, ("q_proj", "v_proj"))),
    "llama": (lambda: LlamaConfig(**LLAMA), 12,
              LoraSpec(4, 8, 0.1, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))),
    "roberta": (lambda: RobertaConfig(**ROBERTA), 12, LoraSpec(4, 8, 0.0, ("query", "key"))),
}
BATCH = 2


def _tiny_setting(family: str, tuning: str = "full", dtype: str = "fp32", **changes) -> Setting:
    config, seq, lora = FAMILIES[family]
    return replace(Setting(config, BATCH, seq, dtype, tuning, lora, fake=False), **changes)


@pytest.fixture(scope="session")
def tiny_setting():
    """tiny_setting(family, tuning="full", dtype="fp32", **Setting fields): a real-tensor Setting of a tiny model."""
    return _tiny_setting


@pytest.fixture(scope="session")
def vit_config():
    return FAMILIES["vit"][0]


@pytest.fixture(scope="session")
def vit_runs():
    """Real runs of the tiny ViT (fp32, GPU-like kernels) for every tuning mode, all four variants."""
    return {t: measure(_tiny_setting("vit", t)) for t in ("full", "lora", "lora-fa", "frozen")}


@pytest.fixture(scope="session")
def vit_config_path(tmp_path_factory):
    """config.json of the tiny ViT, as ``--model`` takes it."""
    folder = tmp_path_factory.mktemp("tiny-vit")
    ViTConfig(**VIT).save_pretrained(folder)
    return str(folder / "config.json")
