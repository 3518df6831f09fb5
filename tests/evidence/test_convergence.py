"""Convergence at the CI scale: converted runs train as well as the baseline (within its seed-to-seed spread), MS-BP
alone reproduces the baseline's curve where the parametrisation is unchanged, and the folded pre-norm runs start
from the same loss and gradients.  Tiny models, few steps; the full runs are ``python -m
approxbp.evidence.convergence``."""

from __future__ import annotations

import json
import math

import pytest

from approxbp.evidence import convergence, data, train


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("convergence")
    document = convergence.run("vit", quick=True, seeds=3, out=out, progress=False)
    return document, json.loads((out / "convergence_vit.json").read_text())


@pytest.fixture(scope="module")
def llama() -> dict:
    return convergence.run("llama", quick=True, seeds=3, out=None, progress=False)


@pytest.fixture(scope="module")
def minilm() -> dict:
    return convergence.run("minilm", quick=True, seeds=2, out=None, progress=False)


def summary(document: dict, tuning: str, variant: str) -> dict:
    return next(r for r in document["summary"] if r["tuning"] == tuning and r["variant"] == variant)


def assert_within_spread(document: dict, tuning: str) -> None:
    spread = document["checks"][tuning]["spread"]
    assert spread["margin"] > 0
    assert set(spread["variants"]) == {"ms", "approx", "approx+ms"}
    for variant, result in spread["variants"].items():
        assert result["within"], (tuning, variant, result, spread["margin"])


def assert_ms_curve_is_the_baseline_curve(document: dict, tuning: str) -> None:
    exact = document["checks"][tuning]["exact"]
    assert all(s["first_steps_max_rel_diff"] <= convergence.CURVE_TOLERANCE for s in exact["seeds"]), exact


def assert_folded_start_is_the_baseline_start(document: dict) -> None:
    for seed in document["checks"]["full"]["folded"]["seeds"]:
        assert seed["folded_norms"] > 0
        assert seed["step0_loss_rel_diff"] <= convergence.STEP0_TOLERANCE
        assert seed["step0_grad_rel_diff"] <= convergence.FOLD_GRAD_TOLERANCE


def assert_converted_runs_save_less(document: dict) -> None:
    saved = {(r["tuning"], r["variant"], r["seed"]): r["saved_bytes"] for r in document["runs"]}
    for (tuning, variant, seed), value in saved.items():
        if variant == "approx+ms":
            assert value < saved[tuning, "ms", seed] < saved[tuning, "baseline", seed]


# One test per trained fixture: under pytest-xdist each fixture then trains once, on one worker.
def test_vit_full_and_lora(vit):
    document, written = vit
    assert written == json.loads(json.dumps(document))
    assert {"experiment", "description", "command", "machine", "torch", "config", "seeds", "metric", "runs", "summary",
            "checks"} <= document.keys()
    run = document["runs"][0]
    assert {"variant", "tuning", "seed", "train_loss", "val_steps", "val_loss", "final", "saved_bytes",
            "seconds"} <= run.keys()
    assert len(run["train_loss"]) == document["config"]["scale"]["steps"]
    assert len(document["runs"]) == 2 * 4 * 3
    # above chance (0.1) by 3 binomial standard deviations of the 360 validation images (0.016): it learns something
    assert summary(document, "full", "baseline")["mean"] > 0.15
    assert summary(document, "lora", "baseline")["mean"] > 0.15
    assert_within_spread(document, "full")
    assert_within_spread(document, "lora")
    assert_ms_curve_is_the_baseline_curve(document, "lora")  # frozen base and norms: the same parametrisation
    assert_folded_start_is_the_baseline_start(document)
    assert_converted_runs_save_less(document)


def test_llama_from_scratch(llama):
    assert summary(llama, "full", "baseline")["mean"] < math.log(256) - 1  # validation loss well below uniform
    assert_within_spread(llama, "full")
    assert_folded_start_is_the_baseline_start(llama)
    assert_converted_runs_save_less(llama)


def test_minilm_full_and_lora(minilm):
    for tuning in ("full", "lora"):
        assert_within_spread(minilm, tuning)
        assert_ms_curve_is_the_baseline_curve(minilm, tuning)  # post-LN: MSLayerNormAffine keeps gamma and beta


def test_same_seed_same_batches_and_different_seeds_differ():
    task = train.make_task("llama", quick=True)
    first = [next(task.batches(train.torch.Generator().manual_seed(s)))[0] for s in (0, 0, 1)]
    assert first[0].equal(first[1]) and not first[0].equal(first[2])


def test_docstring_data_set_is_deterministic_and_split_without_overlap():
    train_split, val_split = data.docstring_classification()
    again = data.docstring_classification()
    assert (train_split, val_split) == again
    assert not set(train_split.texts) & set(val_split.texts)
    assert set(train_split.labels) == set(val_split.labels) == set(range(len(data.DOCSTRING_MODULES)))


@pytest.mark.parametrize("call, message", [
    (lambda: data.docstring_classification(("math", "math")), "at least 2 distinct modules"),
    (lambda: data.byte_windows(data.pydoc_bytes()[1], 1000, 1000), "need more than the stream"),
    (lambda: train.make_task("resnet"), "experiment must be one of"),
    (lambda: convergence.run("vit", quick=True, seeds=1, out=None), "at least 2 seeds"),
    (lambda: convergence.run("vit", quick=True, variants=("ms",), out=None), "must include 'baseline'"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_cli_rejects_one_seed(capsys):
    with pytest.raises(SystemExit) as exit_info:
        convergence.main(["--experiment", "vit", "--seeds", "1"])
    assert exit_info.value.code == 2
    assert "--seeds must be at least 2" in capsys.readouterr().err
