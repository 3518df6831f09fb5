"""``python -m approxbp.memory``: the JSON document round trip, the table, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from approxbp.memory.cli import main
from approxbp.memory.table import render


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_document(capsys, vit_config_path):
    doc = run_json(capsys, "--model", vit_config_path, "--batch", "2", "--dtype", "fp32")
    assert doc["schema"] == "approxbp.memory/1"
    assert doc["model"] | {"name": None} == {"name": None, "class": "ViTForImageClassification", "model_type": "vit",
                                             "blocks": 3, "hidden": 32, "intermediate": 64, "heads": 2,
                                             "kv_heads": 2}
    setting = doc["setting"]
    assert (setting["seq"], setting["tokens"], setting["tuning"], setting["fake"]) == (17, 34, "full", True)
    assert list(doc["variants"]) == ["baseline", "approx", "ms", "both"] and doc["unavailable"] == {}
    d_bytes = 32 * 4
    base = doc["variants"]["baseline"]["block"]["total"]
    for variant in doc["variants"].values():
        block = variant["block"]
        assert block["total"] == sum(block["bytes"].values()) == variant["blocks_total"][doc["block_index"]]
        assert block["total_d_per_token"] == pytest.approx(block["total"] / 34 / d_bytes)
        assert variant["model"]["total"] == sum(variant["blocks_total"]) + variant["outside_blocks"]["total"]
        assert variant["reduction_pct"]["block"] == pytest.approx(100 * (block["total"] - base) / base, abs=0.01)
        assert sum(s["bytes"] for s in variant["storages"]) == block["total"]
        assert variant["analytic"]["total_d_per_token"] == pytest.approx(block["total_d_per_token"])
    assert doc["variants"]["both"]["reduction_pct"]["block"] < doc["variants"]["approx"]["reduction_pct"]["block"] < 0


def test_real_and_fake_documents_agree(capsys, vit_config_path):
    args = ("--model", vit_config_path, "--batch", "2", "--tuning", "lora", "--layers", "2", "--dtype", "bf16")
    fake, real = run_json(capsys, *args), run_json(capsys, *args, "--real")
    assert (fake["setting"].pop("fake"), real["setting"].pop("fake")) == (True, False)
    assert fake == real


def test_table(capsys, vit_config_path):
    assert main(["--model", vit_config_path, "--batch", "2", "--layers", "2"]) == 0
    table = capsys.readouterr().out
    for row in ("baseline", "Approx-BP", "MS-BP", "both", "linear inputs", "activation", "norm", "total",
                "analytic minimum", "whole model, MiB"):
        assert row in table
    assert table == render(run_json(capsys, "--model", vit_config_path, "--batch", "2", "--layers", "2")) + "\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "gpt-9"], "unknown model 'gpt-9'"),
    (["--model", "/"], "cannot read an HF config from '/'"),
    (["--model", "vit-b", "--tuning", "half"], "invalid choice: 'half'"),
    (["--model", "vit-b", "--batch", "0"], "expected a positive integer, got 0"),
    (["--model", "vit-b", "--batch", "many"], "expected a positive integer, got 'many'"),
    (["--model", "vit-b", "--seq", "100"], "--seq 100 is not of that form"),
    (["--model", "roberta-base", "--seq", "600"], "--seq 600 exceeds the model's 512 positions"),
    (["--model", "vit-b", "--dtype", "fp64"], "invalid choice: 'fp64'"),
    (["--model", "llama-7b", "--lora-dropout", "1.5"], "expected a number in [0, 1), got 1.5"),
    (["--model", "llama-7b", "--lora-targets", " , "], "--lora-targets names no module"),
    ([], "the following arguments are required: --model"),
    (["--model", "llama-7b", "--real"], "a real-tensor run would allocate 12.6 GiB of weights"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ") and message in captured.err


def test_module_entry_point(vit_config_path):
    result = subprocess.run([sys.executable, "-m", "approxbp.memory", "--model", vit_config_path, "--batch", "1",
                             "--layers", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "analytic minimum" in result.stdout and result.stderr == ""


def test_missing_model_libraries_give_a_one_line_error():
    import subprocess
    import sys

    code = ("import sys, runpy; sys.modules['transformers'] = None; "
            "runpy.run_module('approxbp.memory', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "python -m approxbp.memory needs transformers: pip install 'approxbp[models]'")
