"""Build a model from its config in a fine-tuning mode, a batch for it, and the kernels it runs with.

``kernels="gpu"`` (default) counts what the GPU kernels of the paper's runs keep, on CPU semantics otherwise:
attention runs torch's flash kernel (q, k, v, output and an fp32 log-sum-exp per head and token are kept; GPU
FlashAttention and memory-efficient attention keep the same and regenerate their dropout mask from an RNG seed, so
attention dropout is left out; an additive bias that requires grad, T5's and Swin's learned position bias, is passed
detached: torch's CPU flash kernel then keeps it as the GPU memory-efficient kernel keeps its ``attn_bias``, and this
counting run computes no gradient for the bias's table; Gemma 2's logit softcapping is dropped: FlashAttention-2
softcaps inside the kernel and keeps the same tensors), and dropout runs ``torch.native_dropout``, which keeps a bool
mask (1 byte per element) as the CUDA kernel does.  ``kernels="cpu"`` counts what this CPU keeps: HF's SDPA
attention, whose CPU path with dropout > 0 is the math path (it keeps the probabilities, the dropout mask and the
dropped probabilities), and CPU dropout, which keeps its mask in the input's dtype; models with attention logit
softcapping run HF's eager attention (SDPA has none), which keeps the probabilities.  (CPU LayerNorm also keeps mean
and rstd in a 16-bit input's dtype, where CUDA keeps fp32: a few bytes per token.)
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers import AttentionInterface, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from approxbp.memory.presets import LoraSpec, class_tokens, vision_tokens

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KERNELS = ("gpu", "cpu")
_FUSED_ATTENTION = "approxbp_fused"  # a name with "flash" in it would send HF looking for the flash-attn package
_HEADS = {"vit": "ViTForImageClassification", "llama": "LlamaForCausalLM",
          "roberta": "RobertaForSequenceClassification", "bert": "BertForSequenceClassification",
          "whisper": "WhisperForAudioClassification"}  # Whisper: its encoder, whose blocks see every frame
# sub-model configs AutoModel does not map (a config.json saved from the sub-model names none of its classes)
_CONFIG_MODELS = {"SiglipTextConfig": "SiglipTextModel", "SiglipVisionConfig": "SiglipVisionModel",
                  "CLIPTextConfig": "CLIPTextModel", "CLIPVisionConfig": "CLIPVisionModel"}


def fused_attention(module, query, key, value, attention_mask, dropout=0.0, softcap=None, **kwargs):
    """HF's SDPA attention forced onto torch's flash kernel, dropout and softcapping left out, a bias that requires
    grad detached (see the module docstring)."""
    if attention_mask is not None:
        attention_mask = attention_mask.detach()
    if kwargs.get("position_bias") is not None:
        kwargs["position_bias"] = kwargs["position_bias"].detach()
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, **kwargs)


AttentionInterface.register(_FUSED_ATTENTION, fused_attention)


class _MaskDropout(TorchFunctionMode):
    """F.dropout in training as ``torch.native_dropout``: same result distribution, a bool mask kept."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            x, p = args[0], kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            if kwargs.get("training", args[2] if len(args) > 2 else True) and p > 0:
                return torch.native_dropout(x, p, True)[0]
        return func(*args, **kwargs)


def kernel_context(kernels: str):
    """The context to run the forward in for ``kernels`` ("gpu" or "cpu")."""
    return _MaskDropout() if kernels == "gpu" else nullcontext()


def fit_sequence(config: PretrainedConfig, seq: int) -> None:
    """Set the config's image size so that a vision model sees ``seq`` tokens (patches + class token), or check a
    text model's position embeddings take ``seq`` tokens; ValueError otherwise."""
    if config.model_type == "whisper":  # the encoder's positions are its frames: input features of 2 seq frames
        config.max_source_positions = seq
        return
    if hasattr(config, "image_size"):
        extra = class_tokens(config)
        side = math.isqrt(seq - extra) if seq > extra else 0
        if side * side != seq - extra or side == 0:
            form = "(patches per side)^2" + (f" + {extra}" if extra else "")
            raise ValueError(f"a {config.model_type} model sees {form} tokens; --seq {seq} is not of that form "
                             f"(e.g. {vision_tokens(config)})")
        config.image_size = side * config.patch_size
        return
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and config.model_type == "roberta":
        limit -= config.pad_token_id + 1  # RoBERTa's positions start after the padding index
    if limit is not None and seq > limit:
        raise ValueError(f"--seq {seq} exceeds the model's {limit} positions")


def build(config: PretrainedConfig, dtype: str, kernels: str) -> nn.Module:
    """The model of ``config`` with its task head (``_HEADS``; else the config's architecture, else the bare model),
    in ``dtype``, on the current default device, in training mode."""
    softcapped = getattr(config, "attn_logit_softcapping", None) is not None
    config._attn_implementation = _FUSED_ATTENTION if kernels == "gpu" else "eager" if softcapped else "sdpa"
    name = _HEADS.get(config.model_type) or (config.architectures or [None])[0]
    if name is None and type(config).__name__ in _CONFIG_MODELS:
        name = _CONFIG_MODELS[type(config).__name__]
    model = getattr(transformers, name)(config) if name else transformers.AutoModel.from_config(config)
    return model.to(DTYPES[dtype]).train()


def apply_tuning(model: nn.Module, tuning: str, lora: LoraSpec) -> nn.Module:
    """full: every weight trains; lora: peft LoRA adapters on ``lora.targets`` (in the model's dtype) and the
    classifier head train; lora-fa: the same with every A frozen; qlora: the blocks' linear layers in NF4
    (``approxbp.memory.quantize``, computing in the model's dtype), then peft's recipe as QLoRA runs it:
    ``prepare_model_for_kbit_training`` (the other weights frozen in fp32) and LoRA adapters in fp32, the forward
    under bf16/fp16 autocast (``run_context``): the residual stream is fp32, and so are the 4-bit layers' outputs
    (bitsandbytes casts them back to their input's dtype), the gated MLP's gate, up and product among them (see
    ``approxbp.memory.analytic`` for what that adds over the minimum and ``convert(gated_dtype=...)``); frozen: no
    weight trains and the input embeddings' output requires grad (as in prompt tuning), so the blocks still run
    their backward.
    Returns the model to run: a PeftModel for the LoRA modes."""
    if tuning == "full":
        return model
    if tuning == "qlora":
        return _qlora(model, lora)
    if tuning == "frozen":
        model.requires_grad_(False)
        model.enable_input_require_grads()
        return model
    from peft import LoraConfig, get_peft_model

    heads = ["classifier"] if isinstance(getattr(model, "classifier", None), nn.Module) else None
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.targets), modules_to_save=heads)
    dtype = next(model.parameters()).dtype
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in transformers 5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        peft_model = get_peft_model(model, config, autocast_adapter_dtype=False).to(dtype).train()
    if tuning == "lora-fa":
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name:
                p.requires_grad_(False)
    return peft_model


def _qlora(model: nn.Module, lora: LoraSpec) -> nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from approxbp.memory.quantize import quantize_blocks

    quantize_blocks(model, next(model.parameters()).dtype)
    model.is_loaded_in_4bit = True  # what from_pretrained(quantization_config=...) marks
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    heads = ["classifier"] if isinstance(getattr(model, "classifier", None), nn.Module) else None
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.targets), modules_to_save=heads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return get_peft_model(model, config).train()


def run_context(tuning: str, dtype: str):
    """The context the forward runs in: QLoRA trains under autocast to its compute dtype (HF Trainer's bf16=True)."""
    if tuning == "qlora" and dtype != "fp32":
        return torch.autocast("cpu", dtype=DTYPES[dtype])
    return nullcontext()


def make_batch(model: nn.Module, batch: int, seq: int, dtype: str) -> dict:
    """Random inputs, and labels so that the forward computes the loss, for the HF ``model`` (not its PEFT wrapper),
    on the current default device."""
    config, head = model.config, type(model).__name__
    if model.main_input_name == "pixel_values":
        side = config.image_size
        inputs = {"pixel_values": torch.randn(batch, config.num_channels, side, side, dtype=DTYPES[dtype])}
    elif model.main_input_name == "input_features":  # Whisper: log-mel frames, two per encoder position
        inputs = {"input_features": torch.randn(batch, config.num_mel_bins, 2 * config.max_source_positions,
                                                dtype=DTYPES[dtype])}
    else:
        inputs = {"input_ids": torch.randint(0, config.vocab_size, (batch, seq))}
    if config.is_encoder_decoder and "input_ids" in inputs:  # T5: the decoder sees seq tokens too
        inputs["decoder_input_ids"] = torch.randint(0, config.vocab_size, (batch, seq))
        if head.endswith("ForConditionalGeneration"):
            inputs["labels"] = inputs["decoder_input_ids"]
    if head.endswith("ForCausalLM"):
        inputs["labels"] = inputs["input_ids"]
    elif head.endswith("Classification"):
        regression = config.num_labels == 1
        inputs["labels"] = torch.randn(batch, dtype=DTYPES[dtype]) if regression else torch.randint(
            0, config.num_labels, (batch,))
    return inputs
