"""``python -m paper_figures``: the quick run draws every registered figure (PNG + JSON whose numbers say what the
figure claims), the CLI's errors, missing inputs, and the curve helpers the figures rely on."""

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def figures(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import paper_figures.cli
    import paper_figures.curves

    return SimpleNamespace(cli=paper_figures.cli, curves=paper_figures.curves)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``python -m paper_figures --quick`` in this process (its entry point: ``test_module_entry_point``)."""
    out = tmp_path_factory.mktemp("figures")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT))
        from paper_figures.cli import main

        assert main(["--quick", "--out", str(out)]) == 0
    return out


def test_quick_run_writes_every_registered_figure(quick_run, figures):
    from paper_figures.registry import FIGURES

    for module in FIGURES:
        png, doc = quick_run / f"{module.NAME}.png", json.loads((quick_run / f"{module.NAME}.json").read_text())
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 20_000
        assert doc["figure"] == module.NAME and doc["scale"] == "quick" and doc["how"]
        assert doc["command"] == f"python -m paper_figures --only {module.NAME} --quick"


def test_regelu2_figure_shows_our_optimum_below_the_official_constants(quick_run):
    tables = json.loads((quick_run / "regelu2_resilu2.json").read_text())["tables"]
    for target in ("gelu", "silu"):
        official, ours = tables[target]
        assert ours["objective_value"] < official["objective_value"]
        assert ours["sup_abs_h_prime_minus_step"] > 0.5  # the paper's objective leaves h' poorly fitted


def test_backward_tables_figure_errors_fall_with_bits(quick_run):
    doc = json.loads((quick_run / "backward_tables.json").read_text())
    assert set(doc["tables"]) == {f"{t}/{o}" for t in ("gelu", "silu") for o in ("primitive", "derivative",
                                                                                "empirical")}
    for key, rows in doc["tables"].items():
        assert [r["bits"] for r in rows] == [1, 2, 3, 4]
        if not key.endswith("primitive"):  # each table minimises (close to) the normal-weighted error
            errors = [r["normal_weighted_error"] for r in rows]
            assert errors == sorted(errors, reverse=True), key


def test_fit_objective_figure_has_its_minimum_at_our_table(quick_run):
    for t in json.loads((quick_run / "fit_objective.json").read_text())["targets"].values():
        j = t["ours"]["J"]
        assert j == pytest.approx(t["ours"]["J_shipped"], rel=1e-9)
        assert min(t["along"]["J_star"]) >= j * (1 - 1e-12)
        assert min(np.min(t["plane"]["J_star_minus_min"]), *t["across"]["middle_J_star_minus_min"]) >= -1e-12
        assert t["official"]["J_own_a"] >= t["official"]["J_star_at_its_knots"] > j


def test_memory_figures_show_the_reductions(quick_run):
    for m in json.loads((quick_run / "block_memory.json").read_text())["models"]:
        totals = {v: e["total_d_per_token"] for v, e in m["variants"].items()}
        assert totals["both"] < min(totals["approx"], totals["ms"]) <= max(totals["approx"], totals["ms"]) < \
            totals["baseline"], m["model"]["name"]
    vit = json.loads((quick_run / "vit_lora.json").read_text())
    kept = vit["memory"]["kept_after_forward_bytes"]
    assert kept["lora+checkpointing"] == kept["lora+approx-bp+ms-bp+checkpointing"] < kept["lora+approx-bp+ms-bp"] \
        < kept["lora"]
    assert all(r > 0 for r in vit["throughput"]["images_per_second"].values())


def test_module_entry_point():
    """``python -m paper_figures`` runs the CLI and exits with its code (2: a bad figure name)."""
    run = subprocess.run([sys.executable, "-m", "paper_figures", "--only", "no_such_figure"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no_such_figure" in run.stderr and run.stdout == ""


def test_unknown_figure_name_is_a_one_line_error(figures, capsys):
    with pytest.raises(SystemExit) as e:
        figures.cli.main(["--only", "no_such_figure"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_figure" in err and "regelu2_resilu2" in err


def test_missing_input_names_the_command_and_skips_the_figure(figures, tmp_path, monkeypatch, capsys):
    from paper_figures.base import Input, MissingInput

    needed = Input("paper_figures/data/no_such_study.json", "python -m approxbp.evidence.no_such_study")

    def make(quick):
        raise AssertionError("a figure with a missing input must not be drawn")

    monkeypatch.setattr(figures.cli, "FIGURES", (SimpleNamespace(NAME="study", TITLE="t", INPUTS=(needed,),
                                                                 make=make),))
    assert figures.cli.main(["--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert ("error: study: missing paper_figures/data/no_such_study.json: produce it with "
            "`python -m approxbp.evidence.no_such_study`") in err
    assert not list(tmp_path.iterdir())
    with pytest.raises(MissingInput, match=re.escape(needed.missing_message())):
        needed.read_json()


def test_normal_weighted_error_is_the_derivative_objective(figures):
    for target, bits in (("gelu", 2), ("silu", 3)):
        curve = figures.curves.shipped(target, bits, "derivative", "shipped")
        assert curve.normal_weighted_error(target) == pytest.approx(curve.objective_value, rel=1e-8)


def test_h_tilde_of_a_table(figures):
    x = np.linspace(-6.0, 6.0, 1201)
    primitive = figures.curves.shipped("gelu", 2, "primitive", "p")
    assert np.allclose(primitive.primitive(x), np.maximum(x[:, None] - np.asarray(primitive.c), 0.0) @ primitive.a)
    step = figures.curves.shipped("silu", 3, "derivative", "d")
    h_tilde = step.primitive(x)
    assert h_tilde[600] == 0.0  # x = 0
    slopes = np.diff(h_tilde) / np.diff(x)
    mid = (x[:-1] + x[1:]) / 2
    away = np.min(np.abs(mid[:, None] - np.asarray(step.thresholds)), axis=1) > 0.01  # not across a threshold
    assert np.allclose(slopes[away], step.step(mid[away]), atol=1e-9)


def test_unusable_output_folder_is_a_one_line_error(figures, tmp_path, capsys):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    assert figures.cli.main(["--out", str(blocked / "figures"), "--only", "regelu2_resilu2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: cannot create output folder")
