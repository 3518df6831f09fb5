"""No silently wrong converted model: peft merges of folded adapters are folded too, adapters added after convert and
the original checkpoint loaded into a converted model are refused, revert follows casts and is all or nothing, and
calibration plans without converting."""

import copy

import pytest
import torch
from convert_models import build, output, relative_diff, with_lora

import approxbp.conversion
from approxbp import calibrate
from approxbp.conversion import convert, plan_activations, revert

LLAMA_TARGETS = ["q_proj", "gate_proj", "up_proj"]  # read the two RMSNorms (gamma only)
VIT_TARGETS = ["q_proj", "fc1"]  # read the two LayerNorms (gamma and beta)


@pytest.mark.parametrize("name,targets,dropout", [("llama", ["q_proj"], 0.0), ("llama", LLAMA_TARGETS, 0.0),
                                                  ("vit", VIT_TARGETS, 0.1)])
def test_merging_folded_adapters_gives_the_merged_original(name, targets, dropout):
    """W' += s B A diag(gamma), b' += s B A beta (lora_A or, with dropout, lora_dropout reads gamma * y + beta)."""
    model = with_lora(build(name)[0], targets, dropout)
    inputs = build(name)[1]
    reference = copy.deepcopy(model)
    expected = output(reference, inputs)
    convert(model)
    twin = copy.deepcopy(model)  # its merge methods act on the copy
    model.merge_adapter()
    assert relative_diff(output(model, inputs), expected) <= 1e-5
    assert relative_diff(output(twin, inputs), expected) <= 1e-5  # the twin was not merged with it
    model.unmerge_adapter()
    assert relative_diff(output(model, inputs), expected) <= 1e-5
    merged = model.merge_and_unload()
    assert relative_diff(output(merged, inputs), expected) <= 1e-5
    revert(model)  # the original model with the adapter merged
    original_merged = reference.merge_and_unload().state_dict()
    assert merged.state_dict().keys() == original_merged.keys()
    assert max(relative_diff(merged.state_dict()[k], v) for k, v in original_merged.items()) <= 1e-5


@pytest.mark.parametrize("target", ["q_proj", "up_proj"])  # up_proj sits in the MLP convert rebuilds
@pytest.mark.parametrize("late", ["get_peft_model", "add_adapter"])
def test_adapters_added_after_convert_are_refused(late, target):
    model, inputs = build("llama")
    if late == "add_adapter":
        model = with_lora(model, [target])
    expected = output(model, inputs)
    convert(model)
    model = with_lora(model, [target], adapter="late")
    refusal = rf"'late' of \S*layers\.0\.\w+\.{target} were added after approxbp\.convert"
    if late == "add_adapter":
        with pytest.raises(RuntimeError, match=refusal):
            model.merge_adapter(["late"])
    with pytest.raises(RuntimeError, match=refusal):
        output(model, inputs)
    if late == "add_adapter":
        model.delete_adapter("late")
        assert relative_diff(output(model, inputs), expected) <= 1e-5


@pytest.mark.parametrize("name", ["llama", "vit"])
def test_the_original_checkpoint_is_refused_by_a_converted_model(name):
    model, inputs = build(name)
    original_state = copy.deepcopy(model.state_dict())
    convert(model)
    converted = output(model, inputs)
    with pytest.raises(ValueError, match=r"state_dict is the unconverted model's: it holds \S+norm\S*\.(weight|bias)"):
        model.load_state_dict(original_state, strict=False)
    assert torch.equal(output(model, inputs), converted)  # nothing was loaded
    model.load_state_dict(copy.deepcopy(model.state_dict()))  # its own (folded) state_dict loads
    revert(model)
    model.load_state_dict(original_state)


@pytest.mark.parametrize("name", ["llama", "vit", "roberta-mlm"])
def test_save_pretrained_then_from_pretrained_unconverted_is_the_same_function(name, tmp_path):
    """HF's save_pretrained of a converted model, loaded by the unconverted class: the folded norms' gamma/beta are
    missing (HF reports them) and start at the identity (gamma = 1, beta = 0), so W diag(gamma) y + b + W beta
    is what the original computed.  An existing unconverted model loaded with strict=False keeps its own norms
    instead (the README's caveat): unconverted_state_dict is the checkpoint for that."""
    model, inputs = build(name)
    convert(model)
    converted = output(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert relative_diff(output(loaded, inputs), converted) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", ["llama", "vit"])
def test_revert_gives_the_model_in_its_current_dtype(name, dtype):
    """convert -> cast -> revert holds exactly what the unconverted model cast the same way holds."""
    model, inputs = build(name)
    reference = copy.deepcopy(model).to(dtype)
    convert(model)
    model.to(dtype)
    revert(model)
    state, expected = model.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    assert all(state[k].dtype == v.dtype and torch.equal(state[k], v) for k, v in expected.items())
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    assert torch.equal(output(model, inputs), output(reference, inputs))


def test_revert_keeps_parameters_loaded_with_assign():
    """load_state_dict(assign=True) puts new Parameters into the converted model (here into BERT's MSLayerNormAffine);
    the LayerNorms coming back on revert take them."""
    source, inputs = build("bert")
    expected = output(source, inputs)
    convert(source)
    model, _ = build("bert", seed=1)
    convert(model)
    model.load_state_dict(source.state_dict(), assign=True)
    revert(model)
    assert relative_diff(output(model, inputs), expected) <= 1e-6


def test_a_revert_that_cannot_be_done_leaves_the_model_converted():
    """Converted on meta, materialized and loaded: the folded norms' gamma/beta never got data, nothing can unfold."""
    source, inputs = build("llama")
    convert(source)
    with torch.device("meta"):
        model, _ = build("llama")
    convert(model)
    model.to_empty(device="cpu")
    model.load_state_dict(source.state_dict())
    expected = output(model, inputs)
    for _ in range(2):  # the same refusal again: nothing was half reverted
        with pytest.raises(RuntimeError, match=r"folded layer.*left converted.*q_proj: its norm's gamma/beta hold no"):
            revert(model)
    assert torch.equal(output(model, inputs), expected)


def test_calibration_plans_without_converting(monkeypatch):
    model, inputs = build("llama")
    names = convert(copy.deepcopy(model), norms=None).activations
    state = copy.deepcopy(model.state_dict())

    def refuse(*args, **kwargs):
        raise AssertionError("calibrate converted the model")

    monkeypatch.setattr(approxbp.conversion, "convert", refuse)
    monkeypatch.setattr(approxbp.conversion, "revert", refuse)
    assert plan_activations(model) == names
    assert tuple(calibrate(model, [inputs])) == names
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="nothing to convert"):
        plan_activations(model, approx=None)
