"""``python -m benchmarks.run --device cpu --quick``: both suites into a temporary folder, the document's fields and
the numbers that must hold on any machine, and the one-line errors of bad flags."""

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
OPS = {"regelu2", "resilu2", "approx_swiglu", "approx_geglu", "ms_layer_norm", "ms_rms_norm", "ms_layer_norm_affine"}
VARIANTS = ["baseline", "approx", "ms", "both", "checkpointing", "both+checkpointing"]
TIMING = {"median_s", "q1_s", "q3_s", "min_s", "max_s", "repeats", "warmup"}
# forward of approxbp's op against torch's: equal in fp32 up to rounding, within a few ulps of |y| <= ~5 in 16 bits
FORWARD_TOLERANCE = {"fp32": 1e-5, "fp16": 8e-3, "bf16": 6.3e-2}


@pytest.fixture(scope="module")
def run_module():
    import sys

    sys.path.insert(0, str(ROOT))
    import benchmarks.run

    yield benchmarks.run
    sys.path.remove(str(ROOT))


@pytest.fixture(scope="module")
def quick(run_module, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cpu_quick.json"
    code = run_module.main(["--suite", "all", "--device", "cpu", "--quick", "--out", str(out)])
    return code, out, json.loads(out.read_text())


def failed(doc: dict) -> list[str]:
    return [f"{s['name']} {v}: {r['failed']}" for s in doc["training"]["settings"] for v, r in s["variants"].items()
            if "failed" in r]


def test_quick_run_writes_the_document_and_its_plot(quick):
    code, out, doc = quick
    assert code == (1 if failed(doc) else 0)
    assert out.with_suffix(".png").read_bytes()[:8] == PNG
    assert doc["schema"] == "approxbp.benchmarks/1" and doc["device"] == "cpu" and doc["quick"] is True
    assert doc["label"].startswith("CPU") and "NOT GPU numbers" in doc["label"]
    env = doc["environment"]
    assert env["device_name"].startswith("CPU: ") and env["torch_threads"] == 1
    assert {"torch", "triton", "transformers", "liger-kernel"} <= set(env["versions"])


def test_kernels_cover_every_op_dtype_and_size_with_spread(quick):
    kernels = quick[2]["kernels"]
    assert kernels["copy_bandwidth_bytes_per_s"] == max(c["bandwidth_bytes_per_s"] for c in kernels["copy"]) > 0
    cases = {(r["op"], r["impl"], r["dtype"], r["size_bytes"]) for r in kernels["results"]}
    assert cases == {(op, impl, dtype, size) for op in OPS for impl in ("approxbp", "torch")
                     for dtype in ("fp32", "bf16", "fp16") for size in kernels["sizes_bytes"]}
    for r in kernels["results"]:
        for direction in ("forward", "backward"):
            d = r[direction]
            assert set(d["timing"]) == TIMING and d["timing"]["min_s"] <= d["timing"]["median_s"] <= d["timing"][
                "max_s"]
            assert d["bandwidth_bytes_per_s"] == pytest.approx(d["bytes_moved"] / d["timing"]["median_s"])
            assert d["fraction_of_copy"] == pytest.approx(d["bandwidth_bytes_per_s"] /
                                                          kernels["copy_bandwidth_bytes_per_s"])
        assert r["forward_max_abs_diff_vs_torch"] <= FORWARD_TOLERANCE[r["dtype"]], r
    skipped = {s["op"]: s["reason"] for s in kernels["skipped"] if s["impl"] == "liger"}
    assert set(skipped) == OPS and "Triton" in skipped["ms_rms_norm"] and "GELU" in skipped["regelu2"]


def test_bytes_moved_count_what_each_op_saves(quick):
    """ReGELU2 saves a 2-bit code per element and its 56-byte table where F.gelu saves x; the gated op saves gate
    and up where torch's silu(g) * u also saves silu(g)."""
    for r in quick[2]["kernels"]["results"]:
        op, impl, size, (rows, hidden) = r["op"], r["impl"], r["size_bytes"], r["shape"]
        n, element = rows * hidden, size // (rows * hidden)
        if (op, impl) == ("regelu2", "approxbp"):
            assert r["saved_bytes"] == n // 4 + 56
            assert r["forward"]["bytes_moved"] == 2 * n * element + n // 4 + 56
            assert r["backward"]["bytes_moved"] == 2 * n * element + n // 4 + 56
        if (op, impl) == ("regelu2", "torch"):
            assert r["saved_bytes"] == n * element and r["backward"]["bytes_moved"] == 3 * n * element
        if op == "approx_swiglu":
            assert r["saved_bytes"] == (2 if impl == "approxbp" else 3) * n * element + (56 if impl == "approxbp"
                                                                                          else 0)


def test_training_has_every_setting_and_variant_with_memory_and_prediction(quick):
    training = quick[2]["training"]
    names = [s["name"] for s in training["settings"]]
    assert names == ["vit-b16-full", "vit-b16-lora-r4", "llama7b-shaped-lora-r64", "roberta-base-lora-r64"]
    for s in training["settings"]:
        assert list(s["variants"]) == VARIANTS and s["layers"] == 2
        runs = {v: r for v, r in s["variants"].items() if "failed" not in r}  # failures: the next test
        saved = {v: r["memory"]["autograd_saved_bytes"] for v, r in runs.items()}
        assert all("record_saved" in r["memory"]["metric"] for r in runs.values())
        for smaller, larger in (("both", "baseline"), ("checkpointing", "baseline"),
                                ("both+checkpointing", "checkpointing")):
            if smaller in saved:
                assert saved[smaller] <= saved[larger] if smaller == "both+checkpointing" else \
                    saved[smaller] < saved[larger], (s["name"], smaller)
        for r in runs.values():
            assert set(r["timing"]) == TIMING and r["timing"]["repeats"] == training["timed_steps"]
            assert r["samples_per_s"] == pytest.approx(s["batch"] / r["timing"]["median_s"])
            assert r["memory_vs_baseline"] == pytest.approx(r["memory"]["autograd_saved_bytes"] / saved["baseline"])
        for r in s["variants"].values():
            assert ("activation_bytes" in r["prediction"]) != ("unavailable" in r["prediction"])
        predicted = {v: r["prediction"].get("activation_bytes") for v, r in s["variants"].items()}
        assert predicted["both"] < predicted["baseline"], s["name"]


def test_summary_tables_list_every_case(quick, run_module):
    from benchmarks.summary import render

    doc = quick[2]
    text = render(doc)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| op ")
            and not line.startswith("| setting ")]
    assert len(rows) == 2 * 7 * 3 + 4 * 6  # kernels at the largest size; settings x variants
    assert text.startswith(doc["label"]) and all(s["name"] in text for s in doc["training"]["settings"])


def test_every_training_variant_runs(quick):
    assert not failed(quick[2])


def test_bad_flags_are_one_line_errors(run_module, tmp_path, capsys):
    for argv in (["--suite", "nope"], ["--device", "cpu"], ["--suite", "all", "--device", "tpu"],
                 ["--suite", "training", "--decoder-layers", "0"]):
        with pytest.raises(SystemExit) as e:
            run_module.main(argv)
        assert e.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, words in ((tmp_path / "r.txt", "must end in .json"), (blocker / "r.json", "cannot create folder")):
        assert run_module.main(["--suite", "kernels", "--device", "cpu", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and str(out) in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(run_module, tmp_path, capsys):
    assert run_module.main(["--suite", "kernels", "--device", "cuda", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --device cuda: no CUDA device is available")
    assert not list(tmp_path.iterdir())
