"""Figures 5-7 and 6b drawn from the committed evidence studies (``paper_figures/data/``): the numbers each figure's
JSON claims are the studies' numbers.  Their quick runs (recomputing the studies) are drawn by test_paper_figures.py and
notebook 03."""

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "paper_figures" / "data"


@pytest.fixture
def figures(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from paper_figures import ablation, convergence, grad_bound, grad_chain, studies

    yield SimpleNamespace(convergence=convergence, grad_bound=grad_bound, grad_chain=grad_chain, ablation=ablation,
                          studies=studies)
    plt.close("all")


def drawn(module) -> dict:
    """The figure's JSON numbers, drawn from the committed data."""
    drawing = module.make(False)
    assert len(drawing.figure.axes) >= 2
    return json.loads(json.dumps(drawing.data))


def test_smoothing_is_a_trailing_moving_average(figures):
    x = np.random.default_rng(0).normal(size=50)
    expected = [x[max(0, t - 6):t + 1].mean() for t in range(50)]
    assert np.allclose(figures.convergence.smooth(list(x), 7), expected)


def test_inputs_name_the_study_that_writes_them(figures):
    for module in (figures.convergence, figures.grad_bound, figures.ablation):
        for i in module.INPUTS:
            study = i.command.split()[2]
            assert i.command.startswith("python -m approxbp.evidence.") and hasattr(importlib.import_module(study),
                                                                                     "main"), i.command
            assert i.path.startswith("paper_figures/data/") and i.path.endswith(".json")


def test_convergence_figure_shows_each_run_of_the_studies(figures):
    panels = drawn(figures.convergence)["panels"]
    docs = {p.stem.removeprefix("convergence_"): json.loads(p.read_text()) for p in DATA.glob("convergence_*.json")}
    assert sorted(docs) == ["llama", "minilm", "vit"]
    assert [(p["experiment"], p["tuning"]) for p in panels] == [(e, t) for e in ("vit", "llama", "minilm")
                                                                 for t in docs[e]["config"]["tunings"]]
    for p in panels:
        doc = docs[p["experiment"]]
        summary = {(s["tuning"], s["variant"]): s for s in doc["summary"]}
        assert set(p["variants"]) == set(doc["config"]["variants"]) >= {"baseline", "ms", "approx", "approx+ms"}
        for variant, v in p["variants"].items():
            s = summary[p["tuning"], variant]
            assert v["final_mean"] == pytest.approx(s["mean"]) and v["final_std"] == pytest.approx(s["std"])
            assert len(v["seeds"]) == s["n"] >= 3
            runs = [r for r in doc["runs"] if r["tuning"] == p["tuning"] and r["variant"] == variant]
            band = v["train_loss_smoothed"]
            assert len(band["mean"]) == len(runs[0]["train_loss"])
            assert np.all(np.array(band["min"]) <= np.array(band["mean"]) + 1e-12)
            assert np.all(np.array(band["mean"]) <= np.array(band["max"]) + 1e-12)
            last = [np.mean(r["train_loss"][-p["smoothing_window"]:]) for r in runs]
            assert band["min"][-1] == pytest.approx(min(last), rel=1e-5)
            assert band["max"][-1] == pytest.approx(max(last), rel=1e-5)
            assert v["val_loss"]["mean"][-1] == pytest.approx(np.mean([r["val_loss"][-1] for r in runs]), rel=1e-5)


def test_grad_bound_figure_shows_every_bound_holding(figures):
    data = drawn(figures.grad_bound)
    doc = json.loads((DATA / "grad_error.json").read_text())
    assert [m["model"] for m in data["models"]] == list(doc["models"])
    for m in data["models"]:
        rows = [r for r in doc["rows"] if r["model"] == m["model"] and r["bits"] == 2 and r["bound"] is not None]
        assert set(m["tables"]) == {r["table"] for r in rows} >= {"primitive-2", "derivative-2", "empirical-2"}
        for table, t in m["tables"].items():
            for kind, ratios in t["ratios"].items():
                mine = sorted((r for r in rows if r["table"] == table and r["bound_kind"] == kind),
                              key=lambda r: r["layer"])
                assert ratios["ratio"] == pytest.approx([r["measured"] / r["bound"] for r in mine], rel=1e-5)
        assert 0 < m["max_ratio"] < 1, m["model"]  # measured below the proven bound everywhere
        assert len(m["h_vs_htilde"]) == len([e for e in doc["h_vs_htilde"] if e["model"] == m["model"]])


def test_grad_chain_figure_shows_every_parameter_within_its_bound(figures):
    data = drawn(figures.grad_chain)
    doc = json.loads((DATA / "grad_chain.json").read_text())
    assert [m["model"] for m in data["models"]] == list(doc["models"])
    for m in data["models"]:
        rows = [r for r in doc["rows"] if r["model"] == m["model"] and r["bits"] == 2
                and r["kind"] in ("primitive", "derivative")]
        assert len(m["params"]) == len(rows) > 0
        assert {p["table"] for p in m["params"]} == {"primitive-2", "derivative-2"}
        assert all(p["measured"] <= p["bound"] * (1 + 1e-5) for p in m["params"])
        assert set(m["stage_errors"]) >= {"primitive-2", "derivative-2", "empirical-2"}
        assert 0 < m["max_ratio"] <= 1 + 1e-5, m["model"]  # 1 exactly in the last block: its bound is exact


def test_ablation_figure_shows_the_studys_means_and_the_papers_table(figures):
    data = drawn(figures.ablation)
    doc = json.loads((DATA / "ablation.json").read_text())
    assert data["answer"] == doc["answer"]
    assert [e["experiment"] for e in data["experiments"]] == list(doc["experiments"])
    summary = {(s["experiment"], s["table"]): s for s in doc["summary"]}
    for e in data["experiments"]:
        assert {"baseline", data["paper_table"]} <= set(e["tables"])
        for table, t in e["tables"].items():
            s = summary[e["experiment"], table]
            assert t["final_metric"]["mean"] == pytest.approx(s["mean"]) and len(t["seeds"]) == s["n"] >= 3
            assert t["final_metric"]["min"] <= t["final_metric"]["mean"] <= t["final_metric"]["max"]
            assert t["grad_rel_error"]["mean"] == pytest.approx(s["grad_rel_error"])
            assert (t["grad_rel_error"]["mean"] == 0) == (table == "baseline")


def test_unknown_names_in_a_study_are_one_line_errors(figures):
    run = {"variant": "approx+foo", "tuning": "full", "seed": 0, "train_loss": [1.0], "val_steps": [1],
           "val_loss": [1.0], "final": {"val_loss": 1.0}, "saved_bytes": 1}
    with pytest.raises(ValueError, match=r"llama: unknown variants \['approx\+foo'\]"):
        figures.convergence.summarize({"experiment": "llama", "metric": "val_loss", "runs": [run]})
    row = {"model": "m", "table": "primitive-2", "kind": "primitive", "bits": 2, "bound_kind": "(v) new"}
    with pytest.raises(ValueError, match=r"m: unknown bound kinds \['\(v\) new'\]"):
        figures.grad_bound.model_summary({"rows": [row], "h_vs_htilde": [], "models": {"m": {}}}, "m")
    row = {"experiment": "llama", "table": "cubic-2", "kind": "cubic"}
    with pytest.raises(ValueError, match=r"llama: unknown table kinds \['cubic'\]"):
        figures.ablation.experiment_summary({"rows": [row], "experiments": {}}, "llama")
