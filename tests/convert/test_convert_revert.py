"""revert: exact when the model was not trained (test_convert_equality checks every architecture), the trained
function kept when it was, clear errors otherwise, and the report says what happened."""

import copy

import pytest
import torch
from convert_models import build, loss, output, relative_diff

from approxbp.conversion import convert, revert


@pytest.mark.parametrize("name", ["vit", "llama", "bert"])
def test_revert_after_training_keeps_what_was_learned(name):
    model, inputs = build(name)
    convert(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        loss(model, inputs).backward()
        optimizer.step()
        optimizer.zero_grad()
    trained = output(model, inputs).detach()
    revert(model)
    assert not any(type(m).__module__.startswith("approxbp") for m in model.modules())
    assert relative_diff(output(model, inputs), trained) <= 1e-5


def test_revert_removes_a_bias_the_fold_created_for_a_frozen_beta():
    import transformers as T

    model = T.ViTModel(T.ViTConfig(image_size=8, patch_size=4, qkv_bias=False, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64)).requires_grad_(False)
    with torch.no_grad():
        model.layers[0].layernorm_before.bias.normal_()
    pixels = torch.randn(2, 3, 8, 8)
    original, state = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    convert(model)
    query = model.layers[0].attention.q_proj
    assert query.bias is not None and not query.bias.requires_grad
    assert relative_diff(model(pixels)[0], original(pixels)[0]) <= 1e-5
    revert(model)
    assert query.bias is None and model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)


def test_revert_errors():
    model, _ = build("llama")
    with pytest.raises(ValueError, match="was not converted"):
        revert(model)
    convert(model)
    model.model.layers[0].mlp = torch.nn.Identity()
    with pytest.raises(RuntimeError, match=r"modules were replaced since the conversion: LlamaDecoderLayer\.mlp"):
        revert(model)


def test_meta_models_convert_and_revert():
    """Shape-only models (the memory profiler's) convert without touching data."""
    with torch.device("meta"):
        model, _ = build("llama")
    report = convert(model)
    assert {c.kind for c in report.changes} == {"folded-norm", "gated-mlp"}
    assert model.model.layers[0].self_attn.q_proj.weight.is_meta
    revert(model)
    assert type(model.model.layers[0].input_layernorm).__name__ == "LlamaRMSNorm"


def test_report_lists_every_change_and_what_was_left():
    model, _ = build("vit")
    text = str(convert(model))
    assert "approxbp.convert (approx='auto', norms='ms', bits=2, objective='primitive', tables=0): 6 converted" in text
    assert ("converted vit.layers.0.layernorm_before: LayerNorm -> MSLayerNorm, gamma, beta folded (into "
            "vit.layers.0.attention.q_proj, vit.layers.0.attention.k_proj, vit.layers.0.attention.v_proj)") in text
    assert "converted vit.layers.1.mlp.activation_fn: GELUActivation -> ApproxAct(target='gelu', bits=2" in text
    assert "left      vit.layernorm: LayerNorm: final norm" in text


def test_modules_coming_back_follow_the_model_to_its_device():
    model, _ = build("llama")
    convert(model)
    model.to("meta")  # stands for .cuda(): the folded norms were not part of the model when it moved
    revert(model)
    assert all(p.is_meta for p in model.parameters())
