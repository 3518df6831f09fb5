"""``fold_norms_for_quantization`` on the decoder families whose norms or readers differ from LLaMA's: Gemma's
offset RMSNorm ((1 + weight) * x: the folded norm's weight goes to 0, not 1) and Mixtral's stacked experts (read
through the ``rules.READERS`` layouts, not ``.weight``)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "convert"))
from decoder_models import build

from approxbp.conversion.quantized import fold_norms_for_quantization

pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["gemma", "mixtral"])
def test_folding_keeps_the_function_and_leaves_identity_norms(name):
    model, inputs = build(name)
    with torch.no_grad():
        expected = model(**inputs).logits
        names = fold_norms_for_quantization(model)
        got = model(**inputs).logits
    assert len(names) == 2 * 2
    offset = 0.0 if name == "gemma" else 1.0  # the weight at which each norm scales by 1
    for norm in names:
        assert bool((model.get_submodule(norm).weight == offset).all()), norm
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5
