"""paper_figures/gpu_benchmarks: the newest CUDA results document when there is one, else the committed CPU quick
run titled as not GPU numbers; a broken results file is a one-line error."""

import copy
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def figure(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT))
    from paper_figures import gpu_benchmarks

    monkeypatch.setattr(gpu_benchmarks, "RESULTS", tmp_path)
    return gpu_benchmarks


@pytest.fixture(scope="module")
def cpu_doc():
    return json.loads((ROOT / "benchmarks" / "results" / "cpu_quick.json").read_text())


def test_without_cuda_results_the_cpu_quick_run_is_drawn_and_says_so(figure, cpu_doc):
    drawing = figure.make(quick=False)
    data = drawing.data
    assert data["gpu_results"] is False and data["source"] == "benchmarks/results/cpu_quick.json"
    assert data["title"].startswith("No CUDA results") and "NOT GPU numbers" in data["title"]
    assert data["label"] == cpu_doc["label"] and data["label"].startswith("CPU")
    assert len(data["kernels_at_largest_size"]) == 2 * 7 * 3  # approxbp and torch x 7 ops x 3 dtypes
    assert {row["variant"] for row in data["training"]} == {"baseline", "approx", "ms", "both", "checkpointing",
                                                            "both+checkpointing"}


def test_the_newest_cuda_document_is_drawn(figure, cpu_doc, tmp_path):
    for created, name in (("2030-01-01T00:00:00+00:00", "old"), ("2030-02-01T00:00:00+00:00", "new")):
        doc = copy.deepcopy(cpu_doc)
        doc.update(device="cuda", created=created, label=f"CUDA: test document {name}")
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    (tmp_path / "cpu.json").write_text(json.dumps(cpu_doc))
    data = figure.make(quick=False).data
    assert data["gpu_results"] is True and data["label"] == "CUDA: test document new"
    assert data["source"] == str(tmp_path / "new.json") and data["title"] == data["label"]


def test_a_broken_results_file_is_a_one_line_error(figure, tmp_path):
    from paper_figures.base import MissingInput

    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(MissingInput, match=r"broken.json is not valid JSON .*python -m benchmarks.run$"):
        figure.make(quick=False)
