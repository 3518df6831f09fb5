"""Bad input leaves the model as it was: unsupported architectures, devices, dtypes and options, and folds that
would not be exact (those are reported and warned about while the rest converts)."""

import copy

import pytest
import torch
from convert_models import build, output, relative_diff

from approxbp.conversion import UnsupportedModelError, convert, plan


def snapshot(model):
    return [type(m) for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    types, state = snapshot(model)
    assert types == before[0]
    assert state.keys() == before[1].keys() and all(torch.equal(state[k], before[1][k]) for k in state)
    assert "_approxbp_conversion" not in model.__dict__


def test_unsupported_architecture_raises_with_the_list_and_changes_nothing():
    import transformers as T

    model = T.FalconModel(T.FalconConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                                         bos_token_id=0, eos_token_id=0))  # no rule: its first norm's readers vary
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError,
                       match=r"(?s)h\.0\.mlp\.act \(GELUActivation.*h\.0\.input_layernorm \(LayerNorm\).*ln_f"):
        convert(model)
    assert_unchanged(model, before)


@pytest.mark.parametrize("kwargs,match", [
    (dict(approx="gelu"), "approx must be"), (dict(norms="fold"), "norms must be"),
    (dict(approx=None, norms=None), "nothing to convert"), (dict(bits=5), "bits must be"),
    (dict(approx="regelu2", bits=3), "2-bit"), (dict(objective="empirical"), "objective must be"),
    (dict(tables=[("gelu", None)]), "tables must be a dict"),
])
def test_bad_options_raise_before_anything_changes(kwargs, match):
    model, _ = build("bert")
    before = snapshot(model)
    with pytest.raises((ValueError, TypeError), match=match):
        convert(model, **kwargs)
    assert_unchanged(model, before)


def test_unsupported_device_and_dtype_raise_before_anything_changes(monkeypatch):
    model, _ = build("llama")
    before = snapshot(model)
    with monkeypatch.context() as patch:
        patch.setattr(plan, "DEVICES", ("cuda",))  # pretend the ops did not run on the CPU
        with pytest.raises(ValueError, match="holds a tensor on cpu; the Approx-BP and MS-BP ops run on"):
            convert(model)
    assert_unchanged(model, before)
    model.to(torch.float8_e4m3fn)
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"holds a torch\.float8_e4m3fn tensor"):
        convert(model)
    assert_unchanged(model, before)


def test_converting_twice_is_a_no_op_and_other_options_need_a_revert():
    model, _ = build("vit")
    report = convert(model)
    modules = list(model.modules())
    state = copy.deepcopy(model.state_dict())
    assert convert(model) is report
    assert list(model.modules()) == modules
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="already converted"):
        convert(model, approx=None)
    with pytest.raises(ValueError, match="part of this model is already converted"):
        convert(torch.nn.Sequential(model))


def test_mixed_trainable_and_frozen_norm_is_left_and_reported():
    model, inputs = build("vit")
    layer = model.vit.layers[0]
    layer.layernorm_before.requires_grad_(False)  # q/k/v stay trainable: folding would change what trains
    original = copy.deepcopy(model)
    with pytest.warns(UserWarning, match=r"layers\.0\.layernorm_before .*mixed trainable"):
        report = convert(model)
    assert [s.name for s in report.unexpected] == ["vit.layers.0.layernorm_before"]
    assert type(layer.layernorm_before) is torch.nn.LayerNorm
    assert len([c for c in report.changes if c.kind == "folded-norm"]) == 3
    assert relative_diff(output(model, inputs), output(original, inputs)) <= 1e-5


def test_zero_gamma_or_trainable_beta_without_a_bias_to_take_it_are_left():
    import transformers as T

    model = T.ViTModel(T.ViTConfig(image_size=8, patch_size=4, qkv_bias=False, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64))
    with torch.no_grad():
        model.layers[0].layernorm_after.weight[3] = 0.0
    with pytest.warns(UserWarning) as warned:
        report = convert(model)
    reasons = {s.name: s.reason for s in report.unexpected}
    assert "no bias to take the trainable beta" in reasons["layers.0.layernorm_before"]
    assert "gamma has zero entries" in reasons["layers.0.layernorm_after"]
    assert "left 2 module(s)" in str(warned[0].message)


def test_approx_modes_convert_only_their_activations():
    model, _ = build("llama")
    with pytest.raises(UnsupportedModelError, match="approx='regelu2' converts gelu, gelu_tanh activations only"):
        convert(model, approx="regelu2", norms=None)
    with pytest.warns(UserWarning, match="converts gelu, gelu_tanh activations only"):
        report = convert(model, approx="regelu2")
    assert {c.kind for c in report.changes} == {"folded-norm"}
    bert, _ = build("bert")
    assert {c.kind for c in convert(bert, approx="regelu2").changes} == {"affine-norm", "activation"}
