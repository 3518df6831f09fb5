"""``python -m approxbp.memory``: bad config fields and too-large ``--real`` runs are one-line errors with exit code
2 before any model is built; ``--help`` and argument errors never import torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from approxbp.memory import cli
from approxbp.memory.cli import DTYPE_BYTES, KERNEL_NAMES, main, real_bytes
from approxbp.memory.models import DTYPES, KERNELS, build
from approxbp.memory.presets import PRESETS


@pytest.fixture
def write_config(tmp_path, vit_config_path):
    """write_config(**changes): the path of the tiny ViT's config.json with ``changes``."""
    def write(**changes) -> str:
        with open(vit_config_path) as f:
            fields = json.load(f) | changes
        path = tmp_path / "config.json"
        path.write_text(json.dumps(fields))
        return str(path)
    return write


def error_line(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    return captured.err


@pytest.mark.parametrize(("changes", "message"), [
    ({"num_hidden_layers": 0}, "config field num_hidden_layers is 0; expected a positive integer"),
    ({"hidden_size": "big"}, "config field hidden_size is 'big'; expected a positive integer"),
    ({"patch_size": 2.5}, "config field patch_size is 2.5; expected a positive integer"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size 30 is not divisible by num_attention_heads 4"),
    ({"num_attention_heads": 4, "num_key_value_heads": 3}, "num_attention_heads 4 is not divisible by "
                                                           "num_key_value_heads 3"),
])
def test_bad_config_field_is_one_line_and_exit_2(capsys, write_config, changes, message):
    assert message in error_line(capsys, ["--model", write_config(**changes)])


def test_layers_override_replaces_a_zero_layer_count(capsys, write_config):
    assert main(["--model", write_config(num_hidden_layers=0), "--layers", "1", "--batch", "1"]) == 0
    assert "analytic minimum" in capsys.readouterr().out


def test_real_above_the_limit_names_it_and_the_way_out(capsys):
    err = error_line(capsys, ["--model", "vit-b", "--real"])
    assert "a real-tensor run would allocate 0.2 GiB of weights and about" in err
    assert "limit 2 GiB" in err and "--force" in err and "drop --real" in err


def test_force_runs_real_above_the_limit(capsys, monkeypatch, vit_config_path):
    monkeypatch.setattr(cli, "REAL_LIMIT", 1000)
    argv = ["--model", vit_config_path, "--batch", "1", "--layers", "1", "--real"]
    assert "(estimated; limit 0 GiB)" in error_line(capsys, argv)
    assert main([*argv, "--force"]) == 0


@pytest.mark.parametrize("preset", ["vit-b", "llama-7b", "roberta-base"])
def test_weight_estimate_is_within_a_percent_of_the_built_model(preset):
    p = PRESETS[preset]
    config = p.config()
    with torch.device("meta"):
        model = build(config, p.dtype, "gpu")
    built = sum(t.numel() * t.element_size() for t in model.parameters())
    fields = config.to_dict()  # as the CLI estimates it: with the class defaults
    assert real_bytes(fields, p.batch, p.seq, p.dtype, "gpu")[0] == pytest.approx(built, rel=0.01)


def test_cli_names_match_the_profiler():
    assert DTYPE_BYTES == {name: dtype.itemsize for name, dtype in DTYPES.items()}
    assert KERNEL_NAMES == KERNELS


_WRAPPER = ("import runpy, sys; sys.argv = ['approxbp.memory', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('approxbp.memory', run_name='__main__')\n"
            "finally:\n    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)")


@pytest.mark.parametrize(("argv", "code", "first_line"), [
    (["--help"], 0, "usage: python -m approxbp.memory"),
    (["--model", "vit-b", "--batch", "0"], 2, "error: argument --batch: expected a positive integer, got 0"),
    (["--model", "gpt-9"], 2, "error: unknown model 'gpt-9'"),
    (["--model", "CONFIG"], 2, "error: config field num_hidden_layers is 0; expected a positive integer"),
])
def test_help_and_input_errors_do_not_import_torch(write_config, argv, code, first_line):
    argv = [write_config(num_hidden_layers=0) if a == "CONFIG" else a for a in argv]
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == code
    assert (proc.stdout + proc.stderr).startswith(first_line)
    assert proc.stderr.splitlines()[-1] == "torch imported: False"
