"""The backward-table ablation at the CI scale: two tables (the paper's and the per-layer calibrated one) x two
seeds on both tasks; the rows carry measured gradient errors, J, sup gaps and saved bytes, and the answer is computed
from paired and Welch t-tests.  The full run is ``python -m approxbp.evidence.ablation``."""

from __future__ import annotations

import json

import pytest

from approxbp.evidence import ablation
from approxbp.evidence.tables import TableSpec, sup_gap

TABLES = [TableSpec("primitive", 2), TableSpec("empirical", 2)]
TARGETS = {"llama": "silu", "minilm": "gelu"}


@pytest.fixture(scope="module")
def ablated(tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("ablation") / "ablation.json"
    document = ablation.run(quick=True, out=out, seeds=2, tables=TABLES, progress=False)
    return document, json.loads(out.read_text())


def rows(document: dict, experiment: str, table: str) -> list[dict]:
    return [r for r in document["rows"] if r["experiment"] == experiment and r["table"] == table]


def assert_schema_and_rows(ablated):
    document, written = ablated
    assert written == json.loads(json.dumps(document))
    assert {"command", "machine", "torch", "experiments", "rows", "summary", "answer"} <= document.keys()
    assert len(document["rows"]) == 2 * 2 * (len(TABLES) + 1)
    assert {"experiment", "table", "kind", "bits", "seed", "final_metric", "grad_rel_error", "J", "sup_gap",
            "saved_bytes_per_element"} <= document["rows"][0].keys()
    assert {s["n"] for s in document["summary"]} == {2}


def assert_gradient_errors_measured_and_lowered_by_calibration(document):
    for experiment in TARGETS:
        assert all(r["grad_rel_error"] == 0 for r in rows(document, experiment, "baseline"))
        paper = [r["grad_rel_error"] for r in rows(document, experiment, "primitive-2")]
        calibrated = [r["grad_rel_error"] for r in rows(document, experiment, "empirical-2")]
        assert all(0 < e < 1 for e in paper + calibrated)
        assert max(calibrated) < min(paper)  # fitted to the layers' own inputs, the step function is closer to h'


def assert_paper_table_objective_gap_and_memory(document):
    for experiment, target in TARGETS.items():
        for row in rows(document, experiment, "primitive-2"):
            assert row["J"] == pytest.approx({"gelu": 0.0095069, "silu": 0.0399413}[target], rel=1e-4)
            assert row["sup_gap"] == pytest.approx(sup_gap(TableSpec("primitive", 2).shipped_table(target), target))
        assert all(r["J"] is None for r in rows(document, experiment, "empirical-2"))
    # GELU: fp32 input (4 bytes) -> 2-bit codes (0.25, plus the table's 56 bytes over the probe's elements)
    assert {r["saved_bytes_per_element"] for r in rows(document, "minilm", "baseline")} == {4.0}
    assert all(0.25 <= r["saved_bytes_per_element"] < 0.26 for r in rows(document, "minilm", "empirical-2"))
    # SwiGLU: gate, silu(gate), up (12 bytes fp32) -> gate, up (8)
    assert {r["saved_bytes_per_element"] for r in rows(document, "llama", "baseline")} == {12.0}
    assert all(8 <= r["saved_bytes_per_element"] < 8.01 for r in rows(document, "llama", "primitive-2"))


def assert_answer_comes_from_the_comparisons(document):
    tests = document["comparisons"]
    assert {(t["experiment"], t["table"], t["reference"]) for t in tests} == {
        (e, "empirical-2", "primitive-2") for e in TARGETS}
    assert all(0 <= t["paired_p_value"] <= 1 and 0 <= t["welch_p_value"] <= 1 for t in tests)
    assert document["answer"] == ablation.answer(tests)


# One test for the trained fixture: under pytest-xdist it then trains once, on one worker.
def test_ablation_quick(ablated):
    assert_schema_and_rows(ablated)
    assert_gradient_errors_measured_and_lowered_by_calibration(ablated[0])
    assert_paper_table_objective_gap_and_memory(ablated[0])
    assert_answer_comes_from_the_comparisons(ablated[0])


def test_answer_names_a_table_that_wins_by_a_paired_test():
    rows_ = [{"experiment": "x", "table": table, "seed": seed, "final_metric": value}
             for table, values in [("primitive-2", [1.0, 2.0, 3.0]), ("derivative-2", [1.1, 2.12, 3.1])]
             for seed, value in enumerate(values)]
    tests = ablation.comparisons(rows_, {"x": True})
    assert tests[0]["paired_p_value"] < 0.05 < tests[0]["welch_p_value"]
    assert "x derivative-2 vs primitive-2: +0.1067" in ablation.answer(tests)
    assert "No table" in ablation.answer([{**tests[0], "paired_p_value": 0.5}])


def test_cli_rejects_one_seed(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ablation.main(["--quick", "--seeds", "1"])
    assert exit_info.value.code == 2
    assert "--seeds must be at least 2" in capsys.readouterr().err


@pytest.mark.parametrize("experiments", [(), ("resnet",)])
def test_unknown_experiments_are_a_clear_error(experiments):
    with pytest.raises(ValueError, match="experiments must be a non-empty subset of llama, minilm"):
        ablation.run(quick=True, out=None, experiments=experiments)
