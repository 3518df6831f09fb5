"""The notebooks run top to bottom and the paper-figure scripts write their figures (both on real fits)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs(notebook, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    cells = json.loads(notebook.read_text())["cells"]
    namespace = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{notebook.name}", "exec"), namespace)
    assert any(c["cell_type"] == "code" for c in cells)


def test_fit_figure(tmp_path):
    out = tmp_path / "fit.png"
    subprocess.run([sys.executable, str(ROOT / "paper_figures" / "make_fit_figure.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_figure_error_metric_agrees_with_the_derivative_fit():
    sys.path.insert(0, str(ROOT / "paper_figures"))
    try:
        from make_fit_figure import normal_weighted_error
    finally:
        sys.path.pop(0)
    from approxbp.fit import fit

    r = fit("gelu", 2, "derivative")
    assert normal_weighted_error(r) == pytest.approx(r.objective_value, rel=1e-8)


def test_memory_figure_from_profiler_json(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
              patch_size=8).save_pretrained(tmp_path)
    doc = subprocess.run([sys.executable, "-m", "approxbp.memory", "--model", str(tmp_path / "config.json"),
                          "--batch", "2", "--json"], check=True, capture_output=True, text=True, timeout=300).stdout
    (tmp_path / "vit.json").write_text(doc)
    out = tmp_path / "memory.png"
    subprocess.run([sys.executable, str(ROOT / "paper_figures" / "make_memory_figure.py"), str(tmp_path / "vit.json"),
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
