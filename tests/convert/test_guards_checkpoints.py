"""Checkpoints across convert: a converted model's state_dict does not load strictly into the unconverted model, and
``unconverted_state_dict`` gives the one that does, exactly, leaving the model converted; revert after ``.half()``."""

import copy

import pytest
import torch
from convert_models import build, output, relative_diff, with_lora

from approxbp.conversion import convert, revert
from approxbp.conversion.core import unconverted_state_dict


@pytest.mark.parametrize("name,targets", [("llama", None), ("vit", None), ("llama", ["q_proj", "up_proj"])])
def test_the_unconverted_state_dict_loads_strictly_into_the_original_model(name, targets):
    model, inputs = build(name)
    if targets:
        model = with_lora(model, targets, 0.1)
    original_state = copy.deepcopy(model.state_dict())
    convert(model)
    converted = output(model, inputs)
    fresh, _ = build(name, seed=1)
    if targets:
        fresh = with_lora(fresh, targets, 0.1)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"\S*norm\S*\.weight\""):
        copy.deepcopy(fresh).load_state_dict(model.state_dict())  # folded weights, no norms: refused strictly

    state = unconverted_state_dict(model)
    assert state.keys() == original_state.keys()
    assert all(torch.equal(state[k], v) for k, v in original_state.items())  # untouched weights: bit for bit
    fresh.load_state_dict(state)
    assert relative_diff(output(fresh, inputs), converted) <= 1e-5
    assert torch.equal(output(model, inputs), converted)  # the model itself stays converted
    revert(model)


def test_the_unconverted_state_dict_after_training_is_the_reverted_models():
    """Trained since the conversion, the folded weights are unfolded as ``revert`` unfolds them."""
    model = build("llama")[0]
    convert(model)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(1.5)
    state = unconverted_state_dict(model)
    revert(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_the_unconverted_state_dict_needs_a_converted_model():
    with pytest.raises(ValueError, match="this module was not converted"):
        unconverted_state_dict(build("llama")[0])
    with pytest.raises(TypeError, match=r"needs a torch\.nn\.Module as model, got str"):
        unconverted_state_dict("model.safetensors")


def test_revert_after_half_gives_the_half_model():
    """convert -> .half() -> revert: the norms come back in fp16 (LLaMA failed with 'expected m1 and m2 to have the
    same dtype' when they came back in fp32)."""
    model, inputs = build("llama")
    reference = copy.deepcopy(model).half()
    convert(model)
    model.half()
    revert(model)
    state, expected = model.state_dict(), reference.state_dict()
    assert all(state[k].dtype == torch.float16 and torch.equal(state[k], v) for k, v in expected.items())
    assert torch.equal(output(model, inputs), output(reference, inputs))
