"""The rules table's claims: every class it names exists and is exercised by a tiny model in these tests, every
activation class maps to the function it computes, and every RMSNorm class is weight * MS-RMSNorm."""

import dataclasses
import functools

import decoder_models
import encoder_models
import pytest
import torch
import transformers.activations
from convert_models import ALL_MODELS, build

from approxbp.conversion import UnsupportedModelError, convert
from approxbp.conversion.rules import ACTIVATION_TARGETS, RMS_NORMS, RULES, matches
from approxbp.modules.approx_act import ApproxAct
from approxbp.modules.ms_norm import MSRMSNorm


@functools.cache
def tested_classes() -> frozenset[type]:
    """Every module class in the tiny models of convert_models, decoder_models and encoder_models."""
    models = [build(n)[0] for n in ALL_MODELS] + [decoder_models.build(n)[0] for n in decoder_models.DECODERS]
    models += [encoder_models.build(n)[0] for n in encoder_models.ENCODER_MODELS]
    return frozenset(type(m) for model in models for m in model.modules())


def test_every_rule_class_is_covered_by_a_tested_model():
    seen = tested_classes()
    for rule in RULES:
        for cls in rule.classes:
            assert any(matches(rule, t) and cls in (t.__name__, f"{t.__module__}.{t.__qualname__}") for t in seen), cls


@pytest.mark.parametrize("name", sorted(ACTIVATION_TARGETS))
def test_activation_classes_map_to_the_function_they_compute(name):
    act = getattr(transformers.activations, name, None) or getattr(torch.nn, name)
    x = torch.linspace(-8, 8, 1001)
    assert torch.allclose(ApproxAct(ACTIVATION_TARGETS[name])(x), act()(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("approximate,target", [("none", "gelu"), ("tanh", "gelu_tanh")])
def test_torch_gelu_maps_by_its_form(approximate, target):
    x = torch.linspace(-8, 8, 1001)
    assert torch.equal(ApproxAct(target)(x), torch.nn.GELU(approximate)(x))


@pytest.mark.parametrize("name", RMS_NORMS)
def test_rms_norm_classes_are_weight_times_ms_rms_norm(name):
    (cls,) = [t for t in tested_classes() if t.__name__ == name]
    norm = cls(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(4, 16)
    assert torch.allclose(norm(x), MSRMSNorm(16, 1e-5)(x) * norm.weight, rtol=1e-6, atol=1e-6)


def test_a_rule_added_for_a_block_with_the_same_structure_converts_it():
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    class MyDecoderLayer(LlamaDecoderLayer):  # say, a copy in a model's remote code
        pass

    model, _ = build("llama")
    for layer in model.model.layers:
        layer.__class__ = MyDecoderLayer
    with pytest.raises(UnsupportedModelError, match=r"input_layernorm .*: no conversion rule covers its block"):
        convert(model)
    llama = next(rule for rule in RULES if "LlamaDecoderLayer" in rule.classes)
    report = convert(model, rules=(*RULES, dataclasses.replace(llama, classes=("MyDecoderLayer",))))
    assert {c.kind for c in report.changes} == {"folded-norm", "gated-mlp"} and not report.unexpected
