import json
import os
import subprocess
import sys

import numpy as np
import pytest

from approxbp.fit import fit
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


@pytest.fixture
def shared_fits(monkeypatch, fitted):
    """The CLI in this process with the session's shared fits (conftest ``fitted``) for the default options."""
    import approxbp.fit.cli

    def cli_fit(target, bits, objective, samples=None, weight="normal", range=None):
        if samples is None and weight == "normal" and range is None:
            return fitted(target, bits, objective)
        return fit(target, bits, objective, samples=samples, weight=weight, range=range)

    monkeypatch.setattr(approxbp.fit.cli, "fit", cli_fit)


def test_json_is_machine_readable_and_deterministic(shared_fits, capsys):
    """A fresh process's JSON equals this process's, printed from the session's shared fit (computed apart)."""
    first = run_cli("--target", "gelu", "--bits", "3", "--json").stdout  # asymmetric, 7 distinct local minima
    data = json.loads(first)
    assert data["target"] == "gelu" and data["bits"] == 3 and len(data["levels"]) == 8
    assert main(["--target", "gelu", "--bits", "3", "--json"]) == 0
    assert capsys.readouterr().out == first


def test_all_targets_at_two_bits(shared_fits, capsys):
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


def test_plot_writes_a_png(tmp_path, shared_fits):
    out = tmp_path / "fit.png"
    assert main(["--target", "gelu", "--bits", "1", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_emit_to_a_path_writes_a_loadable_module(tmp_path, shared_fits):
    out = tmp_path / "constants.py"
    assert main(["--target", "gelu", "--bits", "2", "--emit", str(out)]) == 0
    namespace = {}
    exec(out.read_text(), namespace)
    entry = namespace["TABLES"]["gelu/2/primitive"]
    assert set(namespace["TABLES"]) == {"gelu/2/primitive", "gelu/2/derivative"}
    assert entry["command"] == "python -m approxbp.fit --target gelu --bits 2 --objective primitive"
    assert out.read_text().startswith("# Generated by `python -m approxbp.fit --target all --emit`")


def _write_samples(path):
    """Bad inputs by file name: garbage, truncated or empty .pt; empty .npy/.npz; complex samples."""
    import torch

    name = path.name
    if name == "garbage.pt":
        path.write_bytes(b"not a tensor file")
    elif name == "truncated.pt":
        torch.save(torch.randn(1000), path)
        path.write_bytes(path.read_bytes()[:500])
    elif name in ("empty.pt", "empty-file.npy", "empty-file.npz"):
        path.write_bytes(b"")
    elif name == "empty.npy":
        np.save(path, np.zeros(0))
    elif name == "empty.npz":
        np.savez(path)
    elif name == "complex.npy":
        np.save(path, np.arange(8) * (1 + 1j))
    else:
        torch.save(torch.randn(8, dtype=torch.complex64), path)


@pytest.mark.parametrize("name, message", [
    ("garbage.pt", "garbage.pt: not a readable .pt tensor file (UnpicklingError"),
    ("truncated.pt", "truncated.pt: not a readable .pt tensor file (RuntimeError"),
    ("empty.pt", "empty.pt: not a readable .pt tensor file (EOFError"),
    ("empty-file.npy", "empty-file.npy: not a readable .npy array (EOFError"),
    ("empty.npy", "samples must be a non-empty array of finite numbers"),
    ("empty-file.npz", "empty-file.npz: not a readable .npz archive (EOFError"),
    ("empty.npz", "a histogram .npz needs arrays 'edges' and 'counts', has []"),
    ("complex.npy", "samples must be real numbers, got complex128"),
    ("complex.pt", "samples must be real numbers, got torch.complex64"),
])
def test_bad_sample_files_are_one_line_errors(tmp_path, capsys, name, message):
    """Before: tracebacks (torch.load, np.load) or, for complex samples, a fit of the real parts with a warning."""
    _write_samples(tmp_path / name)
    assert main(["--objective", "empirical", "--samples", str(tmp_path / name)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("content, message", [
    ("TABLES = {\n", "not a constants file written by --emit: not valid Python"),
    ("TABLES = [1, 2]\n", "not a constants file written by --emit: TABLES is a list"),
    ("TABLES = {'gelu': {'levels': (0.0, 1.0)}}\n", "entry 'gelu' is not 'target/bits/objective'"),
    ("TABLES = {'gelu/2/primitive': dict(a=1)}\n", "TABLES is not a literal"),
    ("X = 1\n", "has no TABLES literal"),
])
def test_emit_onto_a_foreign_file_fails_before_fitting(tmp_path, capsys, content, message):
    """Before: a traceback after fitting (syntax error, TypeError) or an unrelated message (ValueError)."""
    path = tmp_path / "constants.py"
    path.write_text(content)
    assert main(["--bits", "1", "--emit", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err, err
    assert path.read_text() == content


@pytest.mark.parametrize("args", [["--weight", "uniform", "--range", "3"], ["--range", "3"],
                                  ["--objective", "empirical", "--samples", "x.npy", "--weight", "uniform"]])
def test_weight_and_range_need_the_derivative_objective(tmp_path, capsys, args):
    """Before: silently ignored by the primitive and empirical objectives."""
    np.save(tmp_path / "x.npy", np.linspace(-3, 3, 100))
    args = [str(tmp_path / a) if a == "x.npy" else a for a in args]
    assert main(["--bits", "1", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--weight and --range apply only to --objective derivative" in err
    with pytest.raises(ValueError, match="only by the derivative objective, not 'primitive'"):
        fit("gelu", 1, range=3.0)
