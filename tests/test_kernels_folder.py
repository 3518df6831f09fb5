"""The repository's kernels/ folder is approxbp.kernels; run from the root it must not shadow a top-level `kernels`."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env_path = [str(extra_path)] if extra_path else []
    script = f"import sys; sys.path[:0] = [''] + {env_path!r}\n{code}"
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_top_level_kernels_package_wins_over_the_folder(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("def get_kernel(name):\n    return 'other ' + name\n")
    done = _run("from kernels import get_kernel; print(get_kernel('k'))", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "other k"


def test_without_one_it_is_an_empty_module():
    done = _run("import kernels; print([n for n in vars(kernels) if not n.startswith('__')])\n"
                "from kernels import get_kernel")
    assert done.stdout.strip() == "[]"
    assert "ImportError: cannot import name 'get_kernel'" in done.stderr


def test_the_package_still_imports_as_approxbp_kernels():
    done = _run("import approxbp.kernels.ms_norm as k; print(k.__name__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "approxbp.kernels.ms_norm"


def test_transformers_models_import_from_the_root():
    done = _run("from transformers import BertForSequenceClassification; print('ok')")
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
