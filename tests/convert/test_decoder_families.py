"""The decoder families of issue 13 (Gemma, Gemma 2, Gemma 3, Phi-3, Mixtral, Qwen2-MoE, Qwen3-MoE, OLMo 2, GPT-2,
GPT-NeoX, Granite), converted at tiny configs: same outputs, exact gradients with MS-BP alone, Approx-BP gradients
equal to those of the original model whose activations alone get the step-function backward, fewer saved bytes,
peft LoRA, and revert (bit for bit untouched, unfolded after training)."""

import copy
import importlib

import pytest
import torch
from convert_models import (
    check_matches_original,
    grads,
    loss,
    max_relative_diff,
    output,
    relative_diff,
    saved_bytes,
    with_lora,
    with_reference_activations,
)
from decoder_models import DECODERS, NO_FOLDS, build, expected_kinds

from approxbp.conversion import UnsupportedModelError, convert, revert
from approxbp.conversion.rules import OFFSET_RMS_NORMS, RMS_NORMS, RULES, matches
from approxbp.modules.ms_norm import MSRMSNorm

FORWARD_TOL = 1e-5  # max |y - y_ref| / max |y_ref|, float32 (issue 13 asks for 1e-4)
GRAD_TOL = 1e-5  # per gradient tensor, relative to its scale (convert_models.max_relative_diff)
GATED_WIDTHS = {  # per token per layer: elements of act(gate) the gated MLPs compute (MoE: top-k experts per token)
    **dict.fromkeys(("gemma", "gemma2", "gemma3", "phi3", "olmo2", "granite"), lambda c: c.intermediate_size),
    "mixtral": lambda c: c.num_experts_per_tok * c.intermediate_size,
    "qwen3-moe": lambda c: c.num_experts_per_tok * c.moe_intermediate_size,
    "qwen2-moe": lambda c: c.num_experts_per_tok * c.moe_intermediate_size + c.shared_expert_intermediate_size,
}
DECODER_RULES = RULES[next(i for i, r in enumerate(RULES) if "GemmaDecoderLayer" in r.classes):]
DECODER_RULES = DECODER_RULES[:next(i for i, r in enumerate(DECODER_RULES) if "GPTNeoXModel" in r.classes) + 1]


@pytest.mark.parametrize("approx", [None, "auto"])
@pytest.mark.parametrize("name", DECODERS)
def test_converted_model_matches_original(name, approx):
    model, inputs = build(name)
    if name in NO_FOLDS and approx is None:  # OLMo 2 has no pre-norm: MS-BP alone finds nothing
        with pytest.raises(UnsupportedModelError, match=r"post_attention_layernorm .*added to the residual stream"):
            convert(model, approx=None)
        return
    check_matches_original(model, inputs, approx, expected_kinds(name, approx), FORWARD_TOL, GRAD_TOL)


@pytest.mark.parametrize("name", [name for name in DECODERS if name not in NO_FOLDS])
def test_saved_bytes_drop_by_at_least_a_tenth(name):
    """fp32, eval (dropout is 0 in these configs, so train mode saves the same)."""
    model, inputs = build(name)
    converted = copy.deepcopy(model)
    convert(converted)
    before, after = saved_bytes(model, inputs), saved_bytes(converted, inputs)
    assert after <= 0.9 * before, (before, after)


@pytest.mark.parametrize("name", GATED_WIDTHS)
def test_fused_gated_mlps_save_exactly_the_activation_output(name):
    """Approx-BP alone on a gated MLP (dense, every MoE expert, Qwen2-MoE's shared expert): autograd no longer keeps
    act(gate) (the fused op keeps gate and up, which the baseline keeps too), fp32, one element per token per gated
    unit it passes through, less the fp64 2-bit table (7 doubles, one storage shared by every layer).  For OLMo 2,
    whose norms all stay (rules.RESIDUAL_RMS_NORM), this is all of its saving: 8.6% at this config."""
    model, inputs = build(name)
    converted = copy.deepcopy(model)
    convert(converted, norms=None)
    tokens, layers = inputs["input_ids"].numel(), model.config.num_hidden_layers
    expected = layers * tokens * GATED_WIDTHS[name](model.config) * 4 - 8 * 7
    assert saved_bytes(model, inputs) - saved_bytes(converted, inputs) == expected


def test_training_then_revert_unfolds_every_reader_layout():
    """Conv1D (GPT-2, weight (in, out), with bias and beta) and stacked experts (Mixtral, (E, out, in)) and the
    router: after an optimizer step, the reverted model computes what the trained converted model computes."""
    for name in ("gpt2", "mixtral"):
        model, inputs = build(name)
        convert(model)
        loss(model, inputs).backward()
        torch.optim.SGD(model.parameters(), lr=1e-2).step()
        trained = output(model, inputs).detach()
        revert(model)
        assert relative_diff(output(model, inputs), trained) <= FORWARD_TOL, name


LORA_TARGETS = {"gemma2": ["q_proj", "v_proj", "gate_proj"], "phi3": ["qkv_proj", "gate_up_proj"],
                "mixtral": ["q_proj", "k_proj", "v_proj"], "gpt-neox": ["query_key_value", "dense_h_to_4h"]}


@pytest.mark.parametrize("name", list(LORA_TARGETS))
def test_lora_trains_the_same_parameters_with_the_same_gradients(name):
    model, inputs = build(name)
    model = with_lora(model, LORA_TARGETS[name]).train()
    original, state = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    report = convert(model)
    assert not report.unexpected, report
    assert relative_diff(output(model, inputs), output(original, inputs)) <= FORWARD_TOL
    reference = with_reference_activations(original, model, report.activations)
    loss(model, inputs).backward()
    loss(reference, inputs).backward()
    assert grads(model).keys() == grads(reference).keys() and all("lora_" in k for k in grads(model))
    assert max_relative_diff(grads(model), grads(reference)) <= GRAD_TOL
    revert(model)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)


def test_lora_on_gpt2_conv1d_leaves_the_norm_with_the_reason():
    """peft's LoRA over a Conv1D keeps its delta transposed (fan_in_fan_out): folded merges handle nn.Linear only."""
    model, inputs = build("gpt2")
    model = with_lora(model, ["c_attn"])
    original = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="ln_1"):
        report = convert(model)
    assert {s.name.rsplit(".", 1)[-1] for s in report.unexpected} == {"ln_1"}
    assert all("wraps a Conv1D" in s.reason for s in report.unexpected)
    assert relative_diff(output(model, inputs), output(original, inputs)) <= FORWARD_TOL


def test_every_decoder_rule_class_is_covered_by_a_tested_model():
    seen = {type(m) for name in DECODERS for m in build(name)[0].modules()}
    for rule in DECODER_RULES:
        for cls in rule.classes:
            assert any(matches(rule, t) and cls == t.__name__ for t in seen), cls


def _norm_class(name: str) -> type:
    family = {"Qwen2Moe": "qwen2_moe", "Qwen3Moe": "qwen3_moe"}.get(name.removesuffix("RMSNorm"))
    family = family or name.removesuffix("RMSNorm").lower()
    return getattr(importlib.import_module(f"transformers.models.{family}.modeling_{family}"), name)


@pytest.mark.parametrize("name", RMS_NORMS[RMS_NORMS.index("Phi3RMSNorm"):RMS_NORMS.index("GraniteRMSNorm") + 1]
                         + OFFSET_RMS_NORMS)
def test_rms_norm_classes_are_gamma_times_ms_rms_norm(name):
    """weight * MS-RMSNorm, or (1 + weight) * MS-RMSNorm for Gemma's."""
    norm = _norm_class(name)(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    gamma = 1 + norm.weight if name in OFFSET_RMS_NORMS else norm.weight
    x = torch.randn(4, 16)
    assert torch.allclose(norm(x), MSRMSNorm(16, 1e-5)(x) * gamma, rtol=1e-6, atol=1e-6)


def test_moe_experts_are_fused_only_where_the_implementation_calls_apply_gate():
    """transformers' eager expert loop computes act(gate) * up inline: converting it leaves the experts' activation
    (reported), and switching a converted model to it is refused rather than computing something else."""
    model, inputs = build("mixtral")
    converted = copy.deepcopy(model)
    convert(converted)
    converted.set_experts_implementation("eager")
    with pytest.raises(RuntimeError, match="does not call _apply_gate"):
        output(converted, inputs)
    model.set_experts_implementation("eager")
    with pytest.warns(UserWarning, match="experts_implementation 'eager' computes act"):
        report = convert(model)
    assert {s.name for s in report.unexpected} == {f"model.layers.{i}.mlp.experts.act_fn" for i in range(2)}
