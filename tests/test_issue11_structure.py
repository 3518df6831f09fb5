"""Issue 11's structure items, held: one convention for the kernel host functions, one definition of each activation
constant in the package's code, and no citation of a file the repository does not hold."""

import importlib
import inspect
import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_CODE = sorted([*(ROOT / "approxbp").rglob("*.py"), *(ROOT / "kernels").glob("*.py")])
KERNEL_MODULES = ("approx_act", "gated", "ms_norm")


def _host_functions(module: str) -> list:
    kernels = importlib.import_module(f"approxbp.kernels.{module}")
    return [f for name, f in vars(kernels).items()
            if inspect.isfunction(f) and f.__module__ == kernels.__name__ and not name.startswith("_")]


@pytest.mark.parametrize("module", KERNEL_MODULES)
def test_kernel_host_functions_write_into_outputs_and_return_nothing(module):
    """``approxbp.ops.backend``: the op allocates the outputs, the host function writes them (MS-norm's returned
    its outputs before)."""
    functions = _host_functions(module)
    assert functions
    for f in functions:
        assert inspect.signature(f).return_annotation in (None, "None"), f"{module}.{f.__name__}"


def _numbers(path: Path) -> set[str]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {t.string for t in tokens if t.type == tokenize.NUMBER}


@pytest.mark.parametrize("literal", ["1.702", "0.044715"])  # QuickGELU's alpha, GELU-tanh's kappa
def test_activation_constants_are_written_once_in_code(literal):
    """Only ``approxbp/targets.py`` spells them as numbers (docstrings may quote them); the kernels, ops and
    conversion import them from there."""
    assert [p.relative_to(ROOT).as_posix() for p in PACKAGE_CODE if literal in _numbers(p)] == ["approxbp/targets.py"]


def test_no_code_cites_a_reference_file_the_repository_lacks():
    citing = [p.relative_to(ROOT).as_posix() for p in [*PACKAGE_CODE, *(ROOT / "proofs").rglob("*.py")]
              if "REFERENCE.md" in p.read_text()]
    assert not (ROOT / "REFERENCE.md").exists() and citing == []
