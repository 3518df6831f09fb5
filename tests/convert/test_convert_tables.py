"""Backward tables: the shipped table per target, bits and objective, or one table per activation keyed by the
activation's qualified name (what calibration will produce)."""

import pytest
from convert_models import build

from approxbp.conversion import convert
from approxbp.fit import fit
from approxbp.tables import Table, default_table


def test_each_activation_gets_the_shipped_table_of_its_own_function():
    model, _ = build("llama-geglu-tanh")
    report = convert(model, bits=3, objective="derivative")
    modules = dict(model.named_modules())
    assert report.activations == ("model.layers.0.mlp.act_fn", "model.layers.1.mlp.act_fn")
    assert all(modules[n].table == default_table("gelu_tanh", 3, "derivative") for n in report.activations)
    assert dict(report.options)["bits"] == 3


def test_per_layer_tables_go_to_the_named_activations():
    model, _ = build("bert")
    first, second = (f"encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(2))
    calibrated = fit("gelu", 3, "derivative")
    pair = ((-1.0, 0.0, 1.0), (0.0, 0.2, 0.9, 1.0))
    report = convert(model, tables={first: calibrated, second: pair})
    modules = dict(model.named_modules())
    assert report.activations == (first, second)
    assert modules[first].table == Table.from_fit(calibrated) and modules[first].bits == 3
    assert modules[second].table == Table(*pair)


@pytest.mark.parametrize("tables,error,match", [
    ({"encoder.layer.0.intermediate": ((0.0,), (0.0, 1.0))}, ValueError, "not converted activations"),
    ({"encoder.layer.0.intermediate.intermediate_act_fn": "gelu"}, TypeError, "table must be"),
])
def test_bad_tables_raise_before_anything_changes(tables, error, match):
    model, _ = build("bert")
    with pytest.raises(error, match=match):
        convert(model, tables=tables)
    assert "_approxbp_conversion" not in model.__dict__
    assert not any(type(m).__module__.startswith("approxbp") for m in model.modules())


def test_a_table_fitted_to_another_function_is_refused():
    model, _ = build("llama")
    with pytest.raises(ValueError, match="fitted to 'gelu' but the activation is 'silu'"):
        convert(model, tables={"model.layers.1.mlp.act_fn": fit("gelu", 2, "derivative")})


def test_tables_under_a_peft_model_use_its_names():
    from peft import LoraConfig, get_peft_model

    model, _ = build("vit")
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    name = "base_model.model.vit.layers.1.mlp.activation_fn"
    report = convert(model, tables={name: ((0.0,), (0.0, 1.0))})
    assert name in report.activations
    assert dict(model.named_modules())[name].bits == 1
