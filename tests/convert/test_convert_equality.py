"""Converted vs original model, for every architecture the rules cover: same outputs; gradients that are exact with
MS-BP alone (after mapping folded gradients back, see approxbp.conversion.fold) and, with Approx-BP, equal to those of
the original model whose activations alone get the step-function backward; revert restores the model bit for bit."""

import copy

import pytest
import torch
from convert_models import (
    ALL_MODELS,
    build,
    check_matches_original,
    expected_kinds,
    grads,
    loss,
    max_relative_diff,
    original_grads,
    output,
    relative_diff,
)

from approxbp.conversion import convert

FORWARD_TOL = 1e-5  # max |y - y_ref| / max |y_ref|, float32
GRAD_TOL = 1e-5  # per gradient tensor, relative to its scale (convert_models.max_relative_diff)


@pytest.mark.parametrize("approx", [None, "auto"])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_converted_model_matches_original(name, approx):
    model, inputs = build(name)
    check_matches_original(model, inputs, approx, expected_kinds(name, approx), FORWARD_TOL, GRAD_TOL)

@pytest.mark.parametrize("name", ["bert", "vit", "timm-vit"])  # not LLaMA: its RMSNorm computes in fp32 for any input
def test_float64_gradients_are_exact_with_ms_bp_alone(name):
    model, inputs = build(name, dtype=torch.float64)
    original = copy.deepcopy(model)
    report = convert(model, approx=None)
    loss(model, inputs).backward()
    loss(original, inputs).backward()
    assert max_relative_diff(original_grads(grads(model), original, report), grads(original)) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["bert", "vit", "llama", "timm-vit"])
def test_low_precision_error_is_no_worse_than_twice_the_originals(name, dtype):
    """Against the float32 model: the converted model's error may exceed the original's own rounding error by 2x."""
    model, inputs = build(name, dtype=dtype)
    original = copy.deepcopy(model)
    convert(model)
    exact = output(*build(name))
    converted_error = relative_diff(output(model, inputs).float(), exact)
    assert converted_error <= 2 * relative_diff(output(original, inputs).float(), exact)


def test_a_norm_without_affine_becomes_an_ms_norm_with_nothing_to_fold():
    model, inputs = build("vit")
    model.vit.layers[0].layernorm_before = torch.nn.LayerNorm(32, eps=1e-12, elementwise_affine=False)
    original = copy.deepcopy(model)
    report = convert(model, approx=None)
    change = next(c for c in report.changes if c.name == "vit.layers.0.layernorm_before")
    assert (change.after, change.readers) == ("MSLayerNorm", ())
    assert relative_diff(output(model, inputs), output(original, inputs)) <= FORWARD_TOL
