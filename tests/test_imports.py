"""Light imports: the ops, modules and conversion load neither scipy nor sympy (the fitter's), and the fit command
loads no torch (checked in a fresh interpreter: sys.modules after the imports)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from approxbp.fit.__main__ import BLAS_THREAD_VARIABLES

LIGHT = ("approxbp.ops", "approxbp.ops.approx_act", "approxbp.ops.gated", "approxbp.ops.ms_norm", "approxbp.modules",
         "approxbp.modules.approx_act", "approxbp.modules.gated", "approxbp.modules.ms_norm", "approxbp.conversion")


def loaded_after(code: str) -> set[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_ops_modules_and_conversion_load_neither_scipy_nor_sympy():
    loaded = loaded_after("\n".join(f"import {m}" for m in LIGHT))
    assert set(LIGHT) <= loaded
    assert not {m for m in loaded if m.split(".")[0] in ("scipy", "sympy")}


def test_calibration_does_not_import_the_conversion_core():
    """calibrate() plans with approxbp.conversion.planner; calibration.py and conversion/core.py imported each other."""
    loaded = loaded_after("import approxbp.calibration")
    assert "approxbp.calibration" in loaded and "approxbp.conversion.core" not in loaded


def test_fit_command_loads_no_torch():
    loaded = loaded_after("from approxbp.fit.cli import build_parser\nbuild_parser()")
    assert "torch" not in loaded and "approxbp.fit.api" in loaded


def blas_threads_after(invocation: str) -> list:
    """[exit code, sorted thread counts of the loaded BLAS/OpenMP pools] after ``invocation`` ran the fit command in a
    fresh interpreter whose environment sets no thread count."""
    script = ("import json, runpy, sys\n"
              "sys.argv = ['approxbp-fit', '--target', 'gelu', '--bits', '1', '--json']\n"
              f"try:\n    {invocation}\n"
              "except SystemExit as done:\n    code = done.code\n"
              "from threadpoolctl import threadpool_info\n"
              "print(json.dumps([code, sorted({i['num_threads'] for i in threadpool_info()})]))")
    env = {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARIABLES}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.splitlines()[-1])


def test_fit_command_runs_numpy_on_one_blas_thread():
    """``python -m approxbp.fit`` sets one BLAS/OpenMP thread before numpy loads (a pool of spinning OpenBLAS threads
    made it 5-10x slower on a loaded 2-core machine); unset variables only, so a caller's choice stands."""
    assert blas_threads_after("runpy.run_module('approxbp.fit', run_name='__main__')") == [0, [1]]


def test_console_script_runs_numpy_on_one_blas_thread():
    """The ``approxbp-fit`` script of pyproject.toml, called as pip's wrapper calls it (import the function, exit with
    its result), gets the same one-thread setting: it is the function ``python -m approxbp.fit`` runs."""
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()  # tomllib is Python 3.11+
    module, function = re.search(r'^approxbp-fit = "([\w.]+):(\w+)"$', pyproject, re.MULTILINE).groups()
    assert blas_threads_after(f"from {module} import {function}; sys.exit({function}())") == [0, [1]]


def test_lazy_fit_exports_are_the_functions_whatever_was_imported_first():
    """``from approxbp.fit import official`` is the function, also after the fit's submodules were imported (a
    submodule named like an export would shadow it: the constants live in ``official_constants``)."""
    script = ("import approxbp.fit.cli, approxbp.fit.api\nfrom approxbp.fit import fit, official\n"
              "print(callable(fit), callable(official), official('gelu').bits)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "2"]
