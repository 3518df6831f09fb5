"""``calibrate`` and ``plan_activations`` with ``example_inputs``: a model no rule covers gets its activations from the
generic path, as ``convert(model, example_inputs=...)`` converts them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from approxbp import calibrate, convert
from approxbp.conversion import UnsupportedModelError
from approxbp.conversion.planner import plan_activations


class PreLNBlock(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.norm, self.up, self.act, self.down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.down(self.act(self.up(self.norm(x))))


def test_generic_activations_are_planned_calibrated_and_converted():
    torch.manual_seed(0)
    model = nn.Sequential(PreLNBlock(), PreLNBlock())
    x = torch.randn(4, 8, 16)
    with pytest.raises(UnsupportedModelError):
        plan_activations(model)
    assert plan_activations(model, example_inputs=x) == ("0.act", "1.act")
    tables = calibrate(model, [x, torch.randn(4, 8, 16)], example_inputs=x)
    assert sorted(tables) == ["0.act", "1.act"]
    reference = model(x)
    report = convert(model, tables=tables, example_inputs=x)
    assert set(report.activations) == {"0.act", "1.act"}
    assert torch.allclose(model(x), reference, rtol=1e-5, atol=1e-6)


def test_convert_calibrates_a_model_no_rule_covers():
    torch.manual_seed(0)
    model = nn.Sequential(PreLNBlock(), PreLNBlock())
    x = torch.randn(4, 8, 16)
    batches = [x, torch.randn(4, 8, 16)]
    reference = model(x)
    expected = calibrate(model, batches, example_inputs=x)
    report = convert(model, calibration_data=batches, example_inputs=x)
    assert set(report.activations) == {"0.act", "1.act"}
    for name, fit in expected.items():
        assert model.get_submodule(name).table.thresholds == fit.thresholds
    assert torch.allclose(model(x), reference, rtol=1e-5, atol=1e-6)
