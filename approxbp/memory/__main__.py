import sys
from importlib.util import find_spec


def _missing(name: str) -> SystemExit:  # transformers / peft: the `models` extra
    print(f"python -m approxbp.memory needs {name}: pip install 'approxbp[models]'", file=sys.stderr)
    return SystemExit(2)


if find_spec("transformers") is None:  # checked without importing it (it imports torch)
    raise _missing("transformers")

from approxbp.memory.cli import main  # noqa: E402

try:
    code = main()
except ModuleNotFoundError as e:  # imported on first use
    raise _missing(e.name) from None
raise SystemExit(code)
