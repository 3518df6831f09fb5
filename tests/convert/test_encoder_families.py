"""Encoder and vision families (issue 13: CLIP, SigLIP, DINOv2, DeBERTa-v2/v3, T5, ModernBERT), converted vs original:
same outputs; gradients exact with MS-BP alone (folded gradients mapped back) and, with Approx-BP, equal to those of
the original whose activations alone get the step backward; revert restores the model bit for bit; saved activation
bytes drop; peft LoRA on them converts and trains the same parameters with the same gradients."""

import copy

import pytest
import torch
from convert_models import (
    check_matches_original,
    check_revert,
    grads,
    loss,
    max_relative_diff,
    original_grads,
    output,
    relative_diff,
    saved_bytes,
    with_lora,
    with_reference_activations,
)
from encoder_models import ENCODER_MODELS, build, expected_kinds

from approxbp.conversion import convert
from approxbp.conversion.rules import RMS_NORMS, RULES, matches
from approxbp.modules.ms_norm import MSRMSNorm

FORWARD_TOL = 1e-5  # max |y - y_ref| / max |y_ref|, float32
GRAD_TOL = 1e-5  # per gradient tensor, relative to its scale (convert_models.max_relative_diff)


def comparable(gradients: dict) -> dict:
    """The gradients but the key biases': softmax is shift-invariant per query, so theirs vanish in theory and are
    rounding noise (above max_relative_diff's floor in CLIP and SigLIP)."""
    return {k: g for k, g in gradients.items() if not k.endswith("k_proj.bias")}


def mapped_grads(model, original, report) -> dict:
    """convert_models.original_grads, where a reader beta is not folded into (Fold.shift_free: Whisper's bias-free
    k_proj) counts as having a zero bias gradient: beta's term there vanishes, the keys' gradients sum to zero."""
    converted = grads(model)
    added = {f"{r}.bias": converted[f"{r}.weight"].new_zeros(len(converted[f"{r}.weight"]))
             for c in report.changes for r in c.readers if f"{r}.weight" in converted and f"{r}.bias" not in converted}
    mapped = original_grads({**converted, **added}, original, report)
    return {k: g for k, g in mapped.items() if k not in added}


# MS-BP alone, exact gradients; "auto" (all models) checks the folds too
MS_BP_ALONE = ("clip-vision", "deberta-v3-mlm", "t5-gated-gelu", "modernbert-mlm", "whisper")


@pytest.mark.parametrize("name,approx", [(n, None) for n in MS_BP_ALONE] + [(n, "auto") for n in ENCODER_MODELS])
def test_converted_model_matches_original(name, approx):
    model, inputs = build(name)
    check_matches_original(model, inputs, approx, expected_kinds(name, approx), FORWARD_TOL, GRAD_TOL, mapped_grads,
                           comparable)


@pytest.mark.parametrize("name", ENCODER_MODELS)
def test_saved_bytes_drop_by_at_least_a_tenth(name):
    """fp32, in eval and in train mode (dropout is 0 in these configs), Approx-BP and MS-BP together."""
    model, inputs = build(name)
    converted = copy.deepcopy(model)
    convert(converted)
    for mode in (False, True):
        model.train(mode), converted.train(mode)
        before, after = saved_bytes(model, inputs), saved_bytes(converted, inputs)
        assert after <= 0.9 * before, (mode, after / before)


def test_ms_bp_saves_each_pre_norms_input_and_mean():
    """CLIP vision, norms alone: per folded LayerNorm autograd no longer keeps its input x and mean (rstd stays; its
    output is the q/k/v or fc1 input, saved by them before and shared now)."""
    model, inputs = build("clip-vision")  # 2 blocks, 2 images x 5 tokens, width 32
    converted = copy.deepcopy(model)
    report = convert(converted, approx=None)
    rows, width = 10, 32
    folded = sum(c.kind == "folded-norm" for c in report.changes)
    assert folded == 4
    assert saved_bytes(model, inputs) - saved_bytes(converted, inputs) == folded * (rows * width * 4 + rows * 4)


def test_modernbert_fused_geglu_takes_wi_output_whole_and_keeps_its_dropout():
    """ModernBERT's act(input) * gate on Wi's halves: the fused op saves Wi's output (one storage) and not
    act(input) besides; with mlp_dropout the converted MLP draws the same dropout masks (train mode)."""
    import transformers as T

    torch.manual_seed(0)
    config = T.ModernBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                                sep_token_id=2, global_attn_every_n_layers=2, local_attention=4, mlp_dropout=0.3)
    model = T.ModernBertModel(config).train()
    inputs = {"input_ids": torch.randint(3, 64, (2, 8))}
    converted = copy.deepcopy(model)
    report = convert(converted, norms=None)
    assert [c.kind for c in report.changes] == ["gated-mlp", "gated-mlp"]
    for m in (model, converted):
        torch.manual_seed(3)
        loss(m, inputs).backward()
    reference = with_reference_activations(model, converted, report.activations)
    reference.zero_grad()
    torch.manual_seed(3)
    loss(reference, inputs).backward()
    assert max_relative_diff(grads(converted), grads(reference)) <= GRAD_TOL
    model.eval(), converted.eval()
    rows, intermediate, layers = 16, 64, 2
    act_saving = rows * intermediate * 4 - rows * 0  # act(input), no longer saved (Wi's output was saved already)
    assert saved_bytes(model, inputs) - saved_bytes(converted, inputs) == layers * act_saving - 8 * 7


def test_kept_norms_are_reported_with_their_reasons():
    _, reasons = None, {}
    for name in ("clip-vision", "deberta-v3-mlm", "deberta-v2-conv", "t5-gated-gelu", "modernbert-mlm", "swin"):
        model, _ = build(name)
        reasons |= {s.name: s.reason for s in convert(model).skipped if s.expected}
    assert {"pre_layrnorm", "post_layernorm", "deberta.embeddings.LayerNorm", "deberta.encoder.LayerNorm",
            "deberta.encoder.conv.LayerNorm", "encoder.final_layer_norm", "decoder.final_layer_norm",
            "model.final_norm", "encoder.layers.0.blocks.0.layernorm_before", "encoder.layers.0.downsample.norm",
            "embeddings.norm"} <= reasons.keys()
    assert "residual stream" in reasons["pre_layrnorm"] and "attention mask" in reasons["deberta.embeddings.LayerNorm"]


def test_a_pre_norm_without_its_readers_is_left_and_reported():
    """DINOv2's norm2 folds into fc1 or gate/up: with neither there, the norm is left (and said why)."""
    model, inputs = build("dinov2")
    model.encoder.layer[0].mlp = torch.nn.Identity()
    original = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="none of the linear layers"):
        report = convert(model, approx=None)
    assert [s.name for s in report.unexpected] == ["encoder.layer.0.norm2"]
    assert relative_diff(output(model, inputs), output(original, inputs)) <= FORWARD_TOL


LORA_TARGETS = {
    "clip-vision": ["q_proj", "k_proj", "v_proj", "fc1"],
    "dinov2-swiglu": ["q_proj", "v_proj", "gate_proj", "up_proj"],
    "deberta-v3-mlm": ["query_proj", "value_proj", "dense"],
    "t5-gated-gelu": ["q", "k", "v", "wi_0", "wi_1"],
    "modernbert-mlm": ["Wqkv", "Wi"],
    "whisper": ["q_proj", "k_proj", "v_proj", "fc1"],  # frozen base: self_attn_layer_norm's beta goes into k_proj too
}


@pytest.mark.parametrize("name", list(LORA_TARGETS))
def test_lora_trains_the_same_parameters_with_the_same_gradients(name):
    """LoRA dropout 0.1, train mode: the adapters still read gamma * y + beta (AffineThenDropout)."""
    model, inputs = build(name)
    model = with_lora(model, LORA_TARGETS[name], dropout=0.1).train()
    original, state = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    report = convert(model)
    assert not report.unexpected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, p in original.named_parameters() if p.requires_grad}
    torch.manual_seed(1)
    converted_out = output(model, inputs)
    torch.manual_seed(1)
    assert relative_diff(converted_out, output(original, inputs)) <= FORWARD_TOL
    reference = with_reference_activations(original, model, report.activations)
    for m in (model, reference):
        torch.manual_seed(2)  # the same LoRA dropout masks in both models
        loss(m, inputs).backward()
    assert max_relative_diff(comparable(grads(model)), comparable(grads(reference))) <= GRAD_TOL
    check_revert(model, original, state)


ENCODER_RULE_CLASSES = (  # every class the encoder and vision rules name
    "CLIPEncoderLayer", "SiglipEncoderLayer", "CLIPTextModel", "SiglipTextModel", "CLIPVisionModel",
    "SiglipVisionModel", "SiglipMultiheadAttentionPoolingHead", "Dinov2Layer", "Dinov2MLP", "Dinov2SwiGLUFFN",
    "Dinov2Model", "DebertaV2Layer", "DebertaV2Embeddings",
    "transformers.models.deberta_v2.modeling_deberta_v2.ConvLayer", "DebertaV2Encoder", "DebertaV2LMPredictionHead",
    "LegacyDebertaV2PredictionHeadTransform", "T5LayerSelfAttention", "T5LayerCrossAttention", "T5LayerFF",
    "T5DenseActDense", "T5DenseGatedActDense", "T5Stack", "ModernBertEncoderLayer", "ModernBertEmbeddings",
    "ModernBertPredictionHead", "ModernBertModel", "WhisperEncoderLayer", "WhisperDecoderLayer", "WhisperEncoder",
    "WhisperDecoder", "SwinLayer", "SwinPatchMerging", "SwinEmbeddings", "SwinModel",
)
def test_every_encoder_rule_class_is_in_the_rules_and_in_a_tested_model():
    seen = {type(m) for name in ENCODER_MODELS for m in build(name)[0].modules()}
    for cls in ENCODER_RULE_CLASSES:
        rules = [rule for rule in RULES if cls in rule.classes]
        assert rules, cls
        assert any(cls in (t.__name__, f"{t.__module__}.{t.__qualname__}") and matches(rules[0], t) for t in seen), cls


def test_t5_layer_norm_is_weight_times_ms_rms_norm():
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    assert "T5LayerNorm" in RMS_NORMS
    norm = T5LayerNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(4, 16)
    assert torch.allclose(norm(x), MSRMSNorm(16, 1e-5)(x) * norm.weight, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["t5-gated-gelu", "modernbert-mlm", "siglip-vision"])
def test_low_precision_error_is_no_worse_than_twice_the_originals(name, dtype):
    """Against the float32 model: the converted model's error may exceed the original's own rounding error by 2x
    (T5LayerNorm as MS-RMSNorm, ModernBERT's fused GeGLU, SigLIP's tanh-GELU and pooling head)."""
    model, inputs = build(name, dtype=dtype)
    original = copy.deepcopy(model)
    convert(model)
    exact = output(*build(name))
    assert relative_diff(output(model, inputs).float(), exact) <= 2 * relative_diff(output(original, inputs).float(),
                                                                                    exact)


def test_whisper_keys_take_gamma_but_not_beta():
    """Fold.shift_free: k_proj gets W diag(gamma) and stays bias-free; its keys shift by -W beta, which no output
    sees (test_converted_model_matches_original[whisper-*] checks outputs and gradients)."""
    model, _ = build("whisper")
    layer = model.model.encoder.layers[0]
    weight, norm = layer.self_attn.k_proj.weight.detach().clone(), layer.self_attn_layer_norm
    gamma = norm.weight.detach().clone()
    report = convert(model, approx=None)
    assert layer.self_attn.k_proj.bias is None and torch.equal(layer.self_attn.k_proj.weight, weight * gamma)
    assert "beta not in self_attn.k_proj" in next(c.after for c in report.changes if c.name.endswith(
        "encoder.layers.0.self_attn_layer_norm"))
