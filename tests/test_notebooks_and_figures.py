"""The notebooks run top to bottom in a Jupyter kernel at a small scale (APPROXBP_QUICK=1) and are stored without
outputs.  The figures: tests/figures/."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_fitting.ipynb", "02_memory.ipynb", "03_convergence.ipynb"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(notebook, monkeypatch):
    monkeypatch.setenv("APPROXBP_QUICK", "1")  # the kernel inherits the environment
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "every notebook shows at least one plot"
    assert any(o.output_type == "stream" and o.text.strip() for o in outputs)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_convergence_notebook_reads_the_committed_studies(monkeypatch):
    """Without APPROXBP_QUICK, notebook 03 draws the committed paper_figures/data/ documents (reading, no training)."""
    monkeypatch.delenv("APPROXBP_QUICK", raising=False)
    nb = nbformat.read(ROOT / "notebooks" / "03_convergence.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.text for o in outputs if o.output_type == "stream")
    assert "read from paper_figures/data/: vit, llama, minilm" in text
    answer = json.loads((ROOT / "paper_figures" / "data" / "ablation.json").read_text())["answer"]
    assert answer in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
