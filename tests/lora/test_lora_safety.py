"""What the packed LoRA path saves, what it leaves to peft, and two refusals (issue 11): folded gamma/beta made on
the meta device and materialised since, and an adapter added after convert merged without any forward."""

import copy

import pytest
import torch
from lora_models import build, lora_model, with_lora
from torch import nn

from approxbp.conversion import convert, revert
from approxbp.conversion.lora_path import install
from approxbp.modules.lora import LoraForward
from approxbp.saved import record_saved


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_layer_saves_its_input_a_output_and_a_bit_per_element(dtype):
    model, _ = lora_model("llama", 0.1, dtype)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    install([(layer, LoraForward)])
    x = torch.randn(3, 5, layer.in_features, dtype=dtype, requires_grad=True)
    with record_saved(layer) as saved:
        layer(x)
    rank = layer.lora_A["default"].out_features
    assert saved.bytes == x.nbytes + 3 * 5 * rank * x.element_size() + (x.numel() + 7) // 8


def test_lora_fa_saves_no_input_and_keeps_pefts_gradients():
    """A frozen (LoRA-FA): dA is not needed, so neither is x; B's and x's gradients are peft's."""
    model, _ = lora_model("llama", 0.1)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    layer.lora_A["default"].weight.requires_grad_(False)
    reference = copy.deepcopy(layer)
    install([(layer, LoraForward)])
    x = torch.randn(3, 5, layer.in_features)
    results = []
    for module in (reference, layer):
        xi = x.clone().requires_grad_()
        torch.manual_seed(2)
        with record_saved(module) as saved:
            y = module(xi)
        y.square().sum().backward()
        results.append((y, xi.grad, module.lora_B["default"].weight.grad, saved.bytes))
    (y0, dx0, db0, _), (y1, dx1, db1, saved_bytes) = results
    assert torch.allclose(y1, y0, rtol=1e-6) and torch.allclose(dx1, dx0, rtol=1e-5, atol=1e-7)
    assert torch.allclose(db1, db0, rtol=1e-5, atol=1e-7)
    assert saved_bytes == 3 * 5 * layer.lora_A["default"].out_features * 4 + (x.numel() + 7) // 8


def test_unsupported_adapters_keep_pefts_forward_and_are_listed():
    from peft import LoraConfig, get_peft_model

    model, _ = build("llama")
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True, lora_dropout=0.1)
    model = get_peft_model(model, config).train()
    with pytest.warns(UserWarning, match="left 2 module"):  # DoRA readers are not folded either
        report = convert(model, approx=None)
    assert not any(c.kind == "lora" for c in report.packed)
    assert {s.reason for s in report.skipped if ".q_proj" in s.name} == {
        "peft's forward kept: adapter 'default' is a LoRA variant (DoRA, ...)"}
    assert not any(isinstance(m.__dict__.get("forward"), LoraForward) for m in model.modules())


def test_folded_adapters_converted_on_meta_are_refused_once_materialised():
    with torch.device("meta"):
        model, _ = build("llama")
    model = with_lora(model, ["q_proj"], 0.1)
    convert(model, approx=None)
    model.to_empty(device="cpu")
    with pytest.raises(RuntimeError, match="converted on the meta device and materialised since"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("merge", ["merge_and_unload", "merge_adapter"])
def test_an_adapter_added_after_convert_is_refused_at_merge(merge):
    model, inputs = build("llama")
    reference = copy.deepcopy(model)
    convert(model, approx=None)
    late = with_lora(model, ["q_proj"])
    with pytest.raises(RuntimeError, match=r"'default' of \S*layers\.0\.self_attn\.q_proj were added after"):
        getattr(late, merge)()
    revert(model)  # reverted, the same adapter merges as peft merges it
    expected = with_lora(reference, ["q_proj"]).merge_and_unload()(**inputs).logits
    assert torch.allclose(late.merge_and_unload()(**inputs).logits, expected, rtol=1e-5, atol=1e-6)


def test_revert_restores_dropout_modules():
    model, _ = lora_model("roberta-mlm", 0.1)
    dropouts = {n: m for n, m in model.named_modules() if type(m) is nn.Dropout}
    report = convert(model, approx=None)
    assert sorted(c.name for c in report.packed if c.kind == "dropout") == sorted(
        n for n in dropouts if ".lora_dropout." not in n)
    revert(model)
    assert {n: m for n, m in model.named_modules() if isinstance(m, nn.Dropout)} == dropouts

