import json
import os
import subprocess
import sys

import pytest

from approxbp.fit.cli import main


def run_cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "approxbp.fit", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_default_fit_prints_the_table_and_the_official_comparison():
    out = run_cli("--target", "gelu").stdout
    assert "gelu  bits=2  objective=primitive" in out
    assert "official    LowMemoryBP J = 0.009509336" in out and "% lower" in out
    assert "symmetric   yes" in out


def test_json_is_machine_readable_and_deterministic():
    first = run_cli("--target", "silu", "--bits", "3", "--json").stdout
    data = json.loads(first)
    assert data["target"] == "silu" and data["bits"] == 3 and len(data["levels"]) == 8
    assert run_cli("--target", "silu", "--bits", "3", "--json").stdout == first


def test_all_targets_at_two_bits(capsys):
    assert main(["--target", "all", "--bits", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["target"] for d in data] == ["gelu", "gelu_tanh", "silu", "quick_gelu"]


def test_light_start_imports_neither_torch_nor_triton():
    code = ("import sys; from approxbp.fit.cli import main; main(['--bits', '1']); import approxbp;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'triton')]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--target", "relu"], "unknown target 'relu'; valid targets: gelu, gelu_tanh, silu, quick_gelu, all"),
    (["--bits", "5"], "--bits must be in 1..4, got 5"),
    (["--bits", "two"], "invalid int value"),
    (["--objective", "l1"], "unknown objective 'l1'; valid objectives: primitive, derivative, empirical"),
    (["--objective", "empirical"], "--samples FILE goes with --objective empirical"),
    (["--samples", "x.npy"], "--samples FILE goes with --objective empirical"),
    (["--objective", "empirical", "--samples", "/no/such.npy"], "no such file"),
    (["--emit", "/no/such/folder/constants.py"], "folder /no/such/folder does not exist"),
    (["--plot", "/no/such/folder/fit.png"], "does not exist"),
    (["--plot", "fit.bmp"], "unsupported format '.bmp'"),
    (["--target", "all", "--plot", "fit.png"], "--plot draws one table"),
    (["--objective", "derivative", "--weight", "uniform"], "positive finite --range"),
])
def test_errors_are_one_line_with_exit_code_2(args, message):
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize("flag", ["--emit", "--plot"])
def test_emit_or_plot_onto_a_folder_fails_before_fitting_and_writes_nothing(tmp_path, flag):
    folder = tmp_path / "out"
    name = "constants.py" if flag == "--emit" else "fit.png"
    (folder / name).mkdir(parents=True)
    proc = run_cli(flag, str(folder / name), check=False)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr and proc.stdout == ""
    assert [p.name for p in folder.iterdir()] == [name] and not any((folder / name).iterdir())


@pytest.mark.parametrize("flag", ["--emit", "--plot"])
def test_emit_or_plot_into_a_missing_folder_names_the_folder(tmp_path, flag):
    proc = run_cli(flag, str(tmp_path / "missing" / "fit.png"), check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "missing" in proc.stderr
    assert not (tmp_path / "missing").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions; the folder cases above still run")
def test_read_only_emit_path_fails_before_fitting_and_writes_nothing(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    target = folder / "constants.py"
    target.write_text("# original\n")
    target.chmod(0o444)
    folder.chmod(0o555)
    try:
        proc = run_cli("--emit", str(target), check=False)
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 2 and "permission denied" in proc.stderr
    assert target.read_text() == "# original\n" and sorted(p.name for p in folder.iterdir()) == ["constants.py"]


def test_plot_writes_a_png(tmp_path):
    out = tmp_path / "fit.png"
    run_cli("--target", "gelu", "--bits", "1", "--plot", str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_emit_to_a_path_writes_a_loadable_module(tmp_path):
    out = tmp_path / "constants.py"
    run_cli("--target", "gelu", "--bits", "2", "--emit", str(out))
    namespace = {}
    exec(out.read_text(), namespace)
    entry = namespace["TABLES"]["gelu/2/primitive"]
    assert set(namespace["TABLES"]) == {"gelu/2/primitive", "gelu/2/derivative"}
    assert entry["command"] == "python -m approxbp.fit --target gelu --bits 2 --objective primitive"
    assert out.read_text().startswith("# Generated by `python -m approxbp.fit --target all --emit`")
