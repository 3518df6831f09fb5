"""The README's two set-up commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_lines(text):
    return [line.strip() for block in re.findall(r"```\n(.*?)```", text, re.S) for line in block.splitlines()]


def test_ci_runs_exactly_the_readme_test_command():
    readme = _code_lines((ROOT / "README.md").read_text())
    ci = [line.split("&&")[:3] for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    ci_command = [" && ".join(part.strip() for part in parts) for parts in ci if len(parts) == 3]
    assert len(ci_command) == 1 and ci_command[0] in readme


def test_readme_fit_command_runs_the_default_fit():
    readme = _code_lines((ROOT / "README.md").read_text())
    assert any(line.endswith("-m approxbp.fit") and "pip install" in line for line in readme)
