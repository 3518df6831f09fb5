"""The packed LoRA path (``convert(lora="packed", dropout="packed")``, the default) against peft's modules under the
same seed: the same loss, gradients and RNG draws, fewer saved bytes."""

import copy

import pytest
import torch
from lora_models import lora_model, relative, step
from torch import nn

from approxbp.conversion import convert, revert
from approxbp.modules.lora import LoraForward

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # bf16: the packed path against the unpacked conversion


def assert_same_step(got: tuple, expected: tuple, tolerance: float) -> None:
    (loss, grads, _, rng), (loss0, grads0, _, rng0) = got, expected
    assert torch.equal(rng, rng0)  # the same RNG draws: the same masks
    assert abs(loss - loss0) <= tolerance * max(abs(loss0), 1e-2)  # a loss near 0 cancels
    assert grads.keys() == grads0.keys()
    assert max((relative(grads[k], grads0[k]) for k in grads0), default=0.0) <= tolerance


@pytest.mark.parametrize("dropout,dtype", [(0.0, torch.float32), (0.1, torch.float32), (0.1, torch.bfloat16)])
@pytest.mark.parametrize("name", ["llama", "roberta-mlm", "vit"])
def test_packed_path_is_peft_under_the_same_seed(name, dropout, dtype):
    """MS-BP with the packed paths vs peft on the unconverted model (fp32; in bf16 the fold's rounding alone moves
    gradients by a few percent, so there against the same conversion without the packed paths)."""
    model, inputs = lora_model(name, dropout, dtype)
    expected = step(model, inputs)
    converted, unpacked = copy.deepcopy(model), copy.deepcopy(model)
    report = convert(converted, approx=None)
    convert(unpacked, approx=None, lora=None, dropout=None)
    packed_layers = [c for c in report.packed if c.kind == "lora"]
    assert len(packed_layers) == sum(type(m).__name__ == "Linear" and hasattr(m, "lora_A") for m in model.modules())
    dropouts = [n for n, m in model.named_modules() if type(m) is nn.Dropout and ".lora_dropout." not in n]
    assert sorted(c.name for c in report.packed if c.kind == "dropout") == (sorted(dropouts) if dropout else [])
    got = step(converted, inputs)
    assert_same_step(got, expected if dtype == torch.float32 else step(unpacked, inputs), TOLERANCE[dtype])
    if dropout:
        assert got[2] < expected[2]

    revert(converted)
    assert not any(isinstance(m.__dict__.get("forward"), LoraForward) for m in converted.modules())
    assert not any(type(m).__name__ == "PackedDropout" for m in converted.modules())
    assert_same_step(step(converted, inputs), expected, TOLERANCE[dtype] if dtype == torch.float32 else 0)


@pytest.mark.parametrize("name", ["llama", "roberta-mlm", "vit"])
def test_packed_path_under_approx_bp(name):
    """Approx-BP + MS-BP with and without the packed paths: the same step."""
    model, inputs = lora_model(name, 0.1)
    unpacked = copy.deepcopy(model)
    convert(model)
    convert(unpacked, lora=None, dropout=None)
    assert_same_step(step(model, inputs), step(unpacked, inputs), 1e-5)


def test_several_adapters_set_and_disable_adapter_merge_and_eval():
    model, inputs = lora_model("llama", 0.1)
    model.add_adapter("second", copy.deepcopy(model.peft_config["default"]))
    for layer in model.modules():
        if hasattr(layer, "lora_B") and "second" in layer.lora_B:
            torch.nn.init.normal_(layer.lora_B["second"].weight)
    model.base_model.set_adapter(["default", "second"])
    converted = copy.deepcopy(model)
    convert(converted, approx=None)
    assert_same_step(step(converted, inputs), step(model, inputs), 1e-5)
    for twin in (model, converted):
        twin.base_model.set_adapter("second")
    assert_same_step(step(converted, inputs), step(model, inputs), 1e-5)
    with model.disable_adapter(), converted.disable_adapter():
        assert_same_step(step(converted, inputs), step(model, inputs), 1e-5)
    for twin in (model, converted):
        twin.eval()
    assert_same_step(step(converted, inputs), step(model, inputs), 1e-5)
    for twin in (model, converted):
        twin.merge_adapter()
    assert_same_step(step(converted, inputs), step(model, inputs), 1e-5)
    for twin in (model, converted):
        twin.unmerge_adapter()
        twin.train()
    assert_same_step(step(converted, inputs), step(model, inputs), 1e-5)


def test_activation_checkpointing_regenerates_the_same_masks():
    model, inputs = lora_model("llama", 0.1)
    model.base_model.model.gradient_checkpointing_enable({"use_reentrant": False})
    converted = copy.deepcopy(model)
    convert(converted, approx=None)
    assert_same_step(step(converted, inputs), step(model, inputs), 1e-5)


def test_compiled_layer_matches_peft():
    """torch.compile (aot_eager: dynamo and AOT autograd, eager RNG) of a packed LoRA layer."""
    model, _ = lora_model("llama", 0.1)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    reference = copy.deepcopy(layer)
    from approxbp.conversion.lora_path import install

    install([(layer, LoraForward)])
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 5, layer.in_features)
    results = []
    for module, owner in ((reference, reference), (compiled, layer)):
        xi = x.clone().requires_grad_()
        torch.manual_seed(5)
        y = module(xi)
        y.square().sum().backward()
        results.append((y, xi.grad, owner.lora_A["default"].weight.grad, owner.lora_B["default"].weight.grad))
    for got, expected in zip(results[1], results[0], strict=True):
        assert relative(got, expected) <= 1e-6
