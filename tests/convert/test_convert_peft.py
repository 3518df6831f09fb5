"""peft LoRA models: after conversion the adapters train the same parameters with the same gradients (the LoRA path
still reads gamma * y + beta, with or without LoRA dropout), adapter state is unchanged, the adapter shares the norm's
saved output, and LoRA flavours that read the base weight leave their norms alone."""

import copy

import pytest
import torch
from convert_models import build, grads, loss, max_relative_diff, output, relative_diff, with_reference_activations
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

from approxbp.conversion import convert, revert
from approxbp.conversion.layers import AffineInputLinear, AffineThenDropout
from approxbp.saved import record_saved

TARGETS = {  # q/k/v (or qkv) and fc1/gate/up read a norm's output
    "bert": ["query", "key", "value", "dense"],
    "roberta-mlm": ["query", "value"],
    "vit": ["q_proj", "k_proj", "v_proj", "fc1"],
    "llama": ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
    "timm-vit": ["qkv", "fc1", "fc2"],
}


def lora_model(name: str, dropout: float = 0.0, **config):
    model, inputs = build(name)
    torch.manual_seed(0)  # init_lora_weights=False: B is random too, so that A gets a gradient
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[name], lora_dropout=dropout, init_lora_weights=False,
                      **config)
    return get_peft_model(model, lora).train(), inputs


def seeded_loss(model, inputs):
    torch.manual_seed(2)  # the same LoRA dropout masks in both models
    loss(model, inputs).backward()
    return grads(model)


@pytest.mark.parametrize("approx", [None, "auto"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("name", list(TARGETS))
def test_lora_trains_the_same_parameters_with_the_same_gradients(name, dropout, approx):
    model, inputs = lora_model(name, dropout)
    original, state = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    adapter = get_peft_model_state_dict(model)
    report = convert(model, approx=approx)
    assert not report.unexpected

    assert all(requires_grad[n] == p.requires_grad for n, p in model.named_parameters())  # folded norms are gone
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, g in requires_grad.items() if g}
    now = get_peft_model_state_dict(model)
    assert now.keys() == adapter.keys() and all(torch.equal(now[k], adapter[k]) for k in adapter)
    wrapper = AffineThenDropout if dropout else AffineInputLinear
    assert any(c.kind == "folded-norm" for c in report.changes) == any(isinstance(m, wrapper) for m in model.modules())

    torch.manual_seed(1)
    converted_out = output(model, inputs)
    torch.manual_seed(1)
    assert relative_diff(converted_out, output(original, inputs)) <= 1e-5
    reference = with_reference_activations(original, model, report.activations) if approx else original
    assert max_relative_diff(seeded_loss(model, inputs), seeded_loss(reference, inputs)) <= 1e-5

    revert(model)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)


def test_lora_input_shares_the_norm_output():
    """Without LoRA dropout, per folded norm autograd no longer saves the norm's input x and mean, nor the adapter's
    own copy of z: the packed LoRA path (the default) saves the MS norm's output y, which the norm keeps anyway, and
    the parameter A itself (not a folded copy A * gamma)."""
    model, inputs = lora_model("timm-vit")
    converted = copy.deepcopy(model)
    report = convert(converted, approx=None)
    with record_saved(model) as before:
        loss(model, inputs)
    with record_saved(converted) as after:
        loss(converted, inputs)
    rows, width = 2 * 5, 32
    folded = sum(c.kind == "folded-norm" for c in report.changes)  # each has one LoRA reader, qkv or fc1
    with_grad = folded - 1  # the first norm reads the frozen patch embedding: nothing was saved for it
    assert before.bytes - after.bytes == with_grad * (rows * width * 4 + rows * 4)


@pytest.mark.parametrize("config,reason", [(dict(use_dora=True), "variant"), (dict(), "merged")])
def test_lora_flavours_reading_the_base_weight_keep_their_norms(config, reason):
    model, inputs = lora_model("llama", **config)
    if reason == "merged":
        model.merge_adapter()
    original = copy.deepcopy(model)
    with pytest.warns(UserWarning, match=reason):
        report = convert(model)
    assert {c.kind for c in report.changes} == {"gated-mlp"}
    assert all(reason in s.reason for s in report.unexpected)
    assert relative_diff(output(model, inputs), output(original, inputs)) <= 1e-5
