"""Sharing really happens in a converted model: what autograd saves drops by exactly the norms' inputs and statistics
(MS-BP) and by the activations' inputs less their 2-bit codes (Approx-BP)."""

import copy

import pytest
from convert_models import build, saved_bytes

from approxbp.conversion import convert


@pytest.mark.parametrize("approx,norms", [(None, "ms"), ("auto", None), ("auto", "ms")])
def test_saved_bytes_drop_by_the_analytic_amount(approx, norms):
    model, inputs = build("timm-vit")  # 2 blocks, 2 x 5 tokens, width 32, MLP width 128, fp32
    model.train()
    converted = copy.deepcopy(model)
    convert(converted, approx=approx, norms=norms)
    rows, width, hidden, blocks = 10, 32, 128, 2
    norm_saving = rows * width * 4 + rows * 4  # the norm's input x and its mean (rstd stays; y is the linear's input)
    act_saving = rows * hidden * 4 - rows * hidden * 2 // 8  # the GELU input, replaced by packed 2-bit codes
    table = 8 * 7  # the fp64 backward table, one storage shared by every layer
    expected = (2 * blocks * norm_saving if norms else 0) + (blocks * act_saving - table if approx else 0)
    assert saved_bytes(model, inputs) - saved_bytes(converted, inputs) == expected
