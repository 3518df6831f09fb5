"""Tiny models of the encoder and vision families the conversion rules cover (issue 13): hidden 32, 2 layers, built
from HF configs (nothing is downloaded), with randomised norm affines (``convert_models.randomise_norms``)."""

from __future__ import annotations

import torch
from convert_models import randomise_norms
from torch import nn

VOCAB = 64
LAYERS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
SPECIAL_TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _tokens() -> dict:
    return {"input_ids": torch.randint(3, VOCAB, (2, 8))}


def _pixels() -> dict:
    return {"pixel_values": torch.randn(2, 3, 8, 8)}


class PooledOutput(nn.Module):
    """``model`` giving its ``pooler_output`` (SigLIP vision: the attention-pooling head's), which every parameter
    reaches."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **inputs) -> torch.Tensor:
        return self.model(**inputs).pooler_output


def _t5(feed_forward: str) -> tuple[nn.Module, dict]:
    import transformers as T

    config = T.T5Config(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, dropout_rate=0.0,
                        feed_forward_proj=feed_forward, decoder_start_token_id=0)
    return T.T5ForConditionalGeneration(config), {**_tokens(), "decoder_input_ids": torch.randint(3, VOCAB, (2, 5))}


def _whisper() -> tuple[nn.Module, dict]:
    import transformers as T

    config = T.WhisperConfig(vocab_size=VOCAB, num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2,
                             encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                             decoder_ffn_dim=64, max_source_positions=8, max_target_positions=16,
                             decoder_start_token_id=1, **SPECIAL_TOKENS)
    return T.WhisperForConditionalGeneration(config), {"input_features": torch.randn(2, 8, 16),
                                                       "decoder_input_ids": torch.randint(3, VOCAB, (2, 5))}


def _hf(name: str) -> tuple[nn.Module, dict]:
    import transformers as T

    vision = dict(LAYERS, image_size=8, patch_size=4)
    deberta = dict(vocab_size=VOCAB, **LAYERS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                   relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8, max_relative_positions=16)
    modernbert = dict(vocab_size=VOCAB, **LAYERS, **SPECIAL_TOKENS, cls_token_id=1, sep_token_id=2,
                      global_attn_every_n_layers=2, local_attention=4)
    builders = {
        "clip-vision": lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**vision)),
        "clip-text": lambda: T.CLIPTextModel(T.CLIPTextConfig(vocab_size=VOCAB, **LAYERS, max_position_embeddings=8,
                                                                 **SPECIAL_TOKENS)),
        "siglip-text": lambda: T.SiglipTextModel(T.SiglipTextConfig(vocab_size=VOCAB, **LAYERS,
                                                                    max_position_embeddings=8, **SPECIAL_TOKENS)),
        "siglip-vision": lambda: PooledOutput(T.SiglipVisionModel(T.SiglipVisionConfig(**vision))),
        "dinov2": lambda: T.Dinov2Model(T.Dinov2Config(**vision, mlp_ratio=2)),
        "dinov2-swiglu": lambda: T.Dinov2Model(T.Dinov2Config(**vision, mlp_ratio=3, use_swiglu_ffn=True)),
        "deberta-v3-mlm": lambda: T.DebertaV2ForMaskedLM(T.DebertaV2Config(**deberta, norm_rel_ebd="layer_norm",
                                                                           legacy=False)),
        "deberta-v2-conv": lambda: T.DebertaV2ForMaskedLM(T.DebertaV2Config(**deberta, conv_kernel_size=3,
                                                                            legacy=True)),
        "modernbert-mlm": lambda: T.ModernBertForMaskedLM(T.ModernBertConfig(**modernbert)),
        "swin": lambda: T.SwinModel(T.SwinConfig(image_size=8, patch_size=2, embed_dim=16, depths=[2, 2],
                                                 num_heads=[2, 2], window_size=2, mlp_ratio=2.0)),
    }
    if name == "whisper":
        return _whisper()
    if name.startswith("t5"):
        return _t5({"t5-gated-gelu": "gated-gelu", "t5-gelu": "gelu"}[name])
    pixels = name.startswith(("clip-vision", "siglip-vision", "dinov2", "swin"))
    return builders[name](), _pixels() if pixels else _tokens()


ENCODER_MODELS = ("clip-vision", "clip-text", "siglip-text", "siglip-vision", "dinov2", "dinov2-swiglu",
                  "deberta-v3-mlm", "deberta-v2-conv", "t5-gated-gelu", "t5-gelu", "modernbert-mlm", "whisper", "swin")
POST_LN = ("deberta",)
FUSED_GATED = ("modernbert",)


def expected_kinds(name: str, approx: str | None) -> set[str]:
    """The kinds of change ``convert(approx=approx, norms="ms")`` makes to model ``name``."""
    kinds = {"affine-norm"} if name.startswith(POST_LN) else {"folded-norm"}
    if name.startswith("modernbert"):
        kinds.add("affine-norm")  # the embeddings' norm and the MLM head's
    if approx:
        kinds.add("gated-mlp" if name.startswith(FUSED_GATED) else "activation")
        if name.startswith("modernbert"):
            kinds.add("activation")  # the MLM head's act
    return kinds


def build(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, dict]:
    """(model in eval mode with randomised norm affines, inputs): gamma = 1 + N(0, 0.5^2), beta = N(0, 0.2^2), so
    that folding is not trivial."""
    torch.manual_seed(seed)
    model, inputs = _hf(name)
    randomise_norms(model)
    return model.to(dtype).eval(), {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


def saved_bytes_reductions() -> None:
    """Print, per tiny model (fp32, eval), the bytes autograd saves and their reduction by convert() with Approx-BP
    and MS-BP together and with each alone."""
    import copy
    import warnings

    from convert_models import loss

    from approxbp.conversion import convert
    from approxbp.saved import record_saved

    def saved(model, inputs) -> int:
        with record_saved(model) as record:
            loss(model, inputs)
        return record.bytes

    print(f"{'model':16s} {'saved bytes':>11s} {'both':>7s} {'MS-BP':>7s} {'Approx':>7s}")
    for name in ENCODER_MODELS:
        model, inputs = build(name)
        variants = {"both": {}, "MS-BP": {"approx": None}, "Approx": {"norms": None}}
        converted = {k: copy.deepcopy(model) for k in variants}
        with warnings.catch_warnings(action="ignore"):
            for key, options in variants.items():
                convert(converted[key], **options)
        base = saved(model, inputs)
        cells = " ".join(f"{1 - saved(m, inputs) / base:7.1%}" for m in converted.values())
        print(f"{name:16s} {base:11d} {cells}")


if __name__ == "__main__":
    saved_bytes_reductions()
