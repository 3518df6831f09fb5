import sys

try:
    from approxbp.memory.cli import main
except ModuleNotFoundError as e:  # transformers / peft: the `models` extra
    print(f"python -m approxbp.memory needs {e.name}: pip install 'approxbp[models]'", file=sys.stderr)
    raise SystemExit(2) from None

raise SystemExit(main())
