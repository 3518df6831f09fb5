"""A tiny LLaMA quantized to NF4 by bitsandbytes on CPU (saved to a folder, loaded with a BitsAndBytesConfig), peft's
QLoRA recipe on it, and the helpers the QLoRA tests share."""

from __future__ import annotations

import warnings

import torch
from torch import nn

CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=96, max_position_embeddings=64)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def save_tiny_llama(folder) -> None:
    """A from_config LLaMA with norm gammas drawn from [0.5, 1.5] (not the init's ones), saved to ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("norm"):
                module.weight.uniform_(0.5, 1.5)
    model.save_pretrained(folder)


def load_quantized(folder, compute_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The model in ``folder`` with its linear layers in NF4 (double quantization), as QLoRA loads it."""
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute_dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LlamaForCausalLM.from_pretrained(folder, quantization_config=config, device_map="cpu")


def qlora(model: nn.Module, dropout: float, targets=TARGETS) -> nn.Module:
    """peft's QLoRA recipe: prepare_model_for_kbit_training, then LoRA r 8 with B drawn (not zero), seeded."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout,
                                                  target_modules=list(targets)))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return peft_model.train()


def batch() -> torch.Tensor:
    return torch.randint(0, CONFIG["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(2))


def run(model: nn.Module, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, logits, {trainable parameter: gradient}) of one forward and backward under ``seed``."""
    ids = batch()
    model.zero_grad()
    torch.manual_seed(seed)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), grads


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
