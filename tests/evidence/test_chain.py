"""The chain bound of proof (v) through real (small) networks: every parameter's Approx-BP gradient error, quick scale.

The study runs in float64 and its JSON keeps 6 significant digits, so measured <= bound is checked with a relative
slack of 1e-5 (rounding of the two printed numbers), far below the bounds' margins except where they are exact."""

from __future__ import annotations

import json

import pytest

from approxbp.evidence import chain

SLACK = 1e-5


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain") / "grad_chain.json"
    chain.main(["--quick", "--out", str(out)])
    return json.loads(out.read_text())


def test_every_block_weight_of_every_model_has_a_row(doc):
    for name, blocks in (("vit-digits", "vit.layers"), ("llama-bytes", "model.layers")):
        params = {r["param"] for r in doc["rows"] if r["model"] == name}
        for layer in range(4):
            in_block = {p for p in params if p.startswith(f"{blocks}.{layer}.")}
            kinds = {p.rsplit(".", 2)[-2] for p in in_block if p.endswith(".weight")}
            assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= kinds, (name, layer, kinds)
            assert {"fc1", "fc2"} <= kinds or {"gate_proj", "up_proj", "down_proj"} <= kinds, (name, layer, kinds)


def test_every_parameter_error_is_within_its_chain_bound(doc):
    assert doc["rows"]
    broken = [r for r in doc["rows"] if r["measured"] > r["bound"] * (1 + SLACK)]
    assert not broken, broken[:3]
    assert 0 < doc["max_ratio"] <= 1 + SLACK


def test_the_recursion_bounds_the_gradient_error_at_every_stage_output(doc):
    for stage in doc["stages"]:
        assert stage["measured_e"] <= stage["bound_e"] * (1 + SLACK) + 1e-12, stage
    last = [s for s in doc["stages"] if s["stage"] == 4]
    assert all(s["measured_e"] == 0.0 == s["bound_e"] for s in last)  # the head is exact


def test_the_bound_without_the_propagated_error_fails_in_earlier_blocks(doc):
    """A deliberately wrong bound: only the stage's own term ||(K~ - K) g||, as if the error at its output were 0."""
    for model in ("vit-digits", "llama-bytes"):
        early = [r for r in doc["rows"] if r["model"] == model and r["stage"] < 4]
        assert any(r["measured"] > r["local_only"] * (1 + 1e-3) for r in early), model
    last = [r for r in doc["rows"] if r["stage"] == 4]
    assert all(abs(r["measured"] - r["local_only"]) <= SLACK * r["measured"] + 1e-12 for r in last)
