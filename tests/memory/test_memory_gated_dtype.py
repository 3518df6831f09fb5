"""``--gated-dtype`` / ``Setting.gated_dtype``: the Approx-BP variants run ``convert(gated_dtype=...)``.  On the tiny
QLoRA LLaMA (bf16 autocast, peft's fp32 gate and up) bf16 keeps gate and up in 2 bytes instead of 4; the baseline and
MS-BP alone do not change; the JSON and the table say so; a model without a gated MLP is a one-line error."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from approxbp.memory.cli import main
from approxbp.memory.measurement import GatedDtypeError, measure
from approxbp.memory.report import to_json
from approxbp.memory.table import render

pytest.importorskip("bitsandbytes")
INTERMEDIATE, TOKENS, LAYERS = 80, 2 * 12, 2  # conftest's tiny LLaMA and batch, two of its blocks


@pytest.fixture(scope="module")
def measured(tiny_setting):
    setting = tiny_setting("llama", "qlora", "bf16", layers=LAYERS)
    gated = replace(setting, gated_dtype="bf16")
    return measure(setting), measure(gated), gated


def test_gated_dtype_changes_approx_and_both_only(measured):
    """Per block, act(gate) * up keeps gate and up (TOKENS x INTERMEDIATE each) in bf16 rather than fp32."""
    plain, gated, _ = measured
    assert set(plain.profiles) == set(gated.profiles) == {"baseline", "approx", "ms", "both"}
    saved_per_block = 2 * TOKENS * INTERMEDIATE * (4 - 2)
    for name, expected in {"baseline": 0, "ms": 0, "approx": saved_per_block, "both": saved_per_block}.items():
        before, after = plain.profiles[name], gated.profiles[name]
        per_block = [sum(before.bytes_by_kind(b).values()) - sum(after.bytes_by_kind(b).values())
                     for b in range(LAYERS)]
        assert per_block == [expected] * LAYERS, name
        assert before.total - after.total == LAYERS * expected, name


def test_json_and_table_carry_the_gated_dtype(measured):
    plain, gated, setting = measured
    doc = to_json("tiny-llama", setting, gated)
    assert doc["setting"]["gated_dtype"] == "bf16"
    variants = doc["variants"]
    assert variants["both"]["convert"] == {"approx": "auto", "norms": "ms", "gated_dtype": "bf16"}
    assert variants["approx"]["convert"]["gated_dtype"] == "bf16"
    assert variants["ms"]["convert"] == {"approx": None, "norms": "ms"} and variants["baseline"]["convert"] is None
    assert "gate and up in torch.bfloat16" in variants["both"]["conversion"]
    assert render(doc).splitlines()[0].endswith("; gated MLP activation in bf16")
    unset = to_json("tiny-llama", replace(setting, gated_dtype=None), plain)
    assert unset["setting"]["gated_dtype"] is None and "gated MLP" not in render(unset).splitlines()[0]
    assert "gate and up in" not in unset["variants"]["both"]["conversion"]


def test_a_model_without_a_gated_mlp_is_a_one_line_error(tiny_setting, vit_config_path, capsys):
    why = "gated_dtype given, but convert fuses no gated MLP activation in this model"
    with pytest.raises(GatedDtypeError) as refused:
        measure(tiny_setting("roberta", gated_dtype="bf16"))
    assert str(refused.value) == f"gated dtype bf16: {why}"
    assert main(["--model", vit_config_path, "--batch", "1", "--layers", "1", "--real", "--gated-dtype", "fp16"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: gated dtype fp16: {why}\n"


def test_setting_refuses_an_unknown_gated_dtype(tiny_setting):
    with pytest.raises(ValueError, match="gated_dtype must be None or one of fp32, bf16, fp16, got 'int8'"):
        tiny_setting("llama", gated_dtype="int8")


def test_a_bad_gated_dtype_argument_does_not_import_torch():
    code = ("import sys\nfrom approxbp.memory.cli import main\n"
            "try:\n    main(['--model', 'llama-7b', '--gated-dtype', 'fp32'])\n"
            "except SystemExit as done:\n    print(done.code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["2", "False"]
    assert proc.stderr.startswith("error: argument --gated-dtype: invalid choice: 'fp32'")
