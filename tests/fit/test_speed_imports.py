"""The fit command's imports: the targets' numeric forms come from the generated ``approxbp.fit.numerics`` (sympy's
lambdify of the expressions in approxbp/targets.py, printed once), so ``python -m approxbp.fit`` loads no sympy;
the generated file must be what the expressions give today."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import approxbp.fit.numerics
from approxbp.targets import TARGET_NAMES, expression, get_target, numerics_source, symbol


def modules_after(code: str) -> set[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_default_fit_command_loads_no_sympy():
    loaded = modules_after("import contextlib, io\nfrom approxbp.fit.__main__ import main\n"
                           "with contextlib.redirect_stdout(io.StringIO()):\n"
                           "    assert main(['--target', 'gelu']) == 0")
    assert "approxbp.fit.primitive" in loaded and "approxbp.fit.numerics" in loaded
    assert not {m for m in loaded if m.split(".")[0] == "sympy"}


def test_targets_evaluate_without_sympy():
    loaded = modules_after("from approxbp.targets import get_target\nget_target('gelu').df([0.5])")
    assert "approxbp.fit.numerics" in loaded and "sympy" not in loaded


def test_generated_numerics_are_the_expressions_lambdified():
    """Regenerate with ``python -c "from approxbp.targets import write_numerics; write_numerics()"``."""
    assert Path(approxbp.fit.numerics.__file__).read_text() == numerics_source()


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_numeric_forms_equal_lambdify_of_the_expression_bit_for_bit(name):
    x = np.linspace(-15.0, 15.0, 6001)  # inside every target's derivative clip (2 * tail >= 16)
    target, expr = get_target(name), expression(name)
    d1 = sp.diff(expr, symbol())
    for numeric, e in ((target.f, expr), (target.df, d1), (target.d2f, sp.diff(d1, symbol()))):
        lambdified = sp.lambdify(symbol(), e, modules=["scipy", "numpy"])
        assert np.array_equal(numeric(x), lambdified(x))
    assert target.expr == expr
