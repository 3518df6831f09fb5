"""``python -m paper_figures [--quick] [--only NAME ...] [--out DIR]``: draw every registered figure as a PNG beside
a JSON of the numbers it plots (``NAME.png``, ``NAME.json``).

A full run reads its expensive inputs from committed data (``paper_figures/data/``); a figure whose input is missing
is skipped with a one-line message naming the command that writes it, and the run exits with 1.  ``--quick``
recomputes everything at a small scale (what the tests run) and writes into ``paper_figures/out/quick/`` unless
``--out`` is given, so it never overwrites the committed full run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from approxbp import __version__
from approxbp.artifacts import save_figure, write_json
from paper_figures.base import MissingInput
from paper_figures.registry import FIGURES

OUT = Path(__file__).resolve().parent / "out"
DPI = 110


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def parser() -> argparse.ArgumentParser:
    names = [f.NAME for f in FIGURES]
    p = _Parser(prog="python -m paper_figures",
                description="Draw the paper's figures, each as a PNG beside a JSON of the numbers it plots.")
    p.add_argument("--quick", action="store_true", help="recompute every input at a small scale (seconds)")
    p.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"figures to draw: {', '.join(names)}")
    p.add_argument("--out", type=Path, help=f"output folder (default {OUT.relative_to(OUT.parents[1])}/, "
                                            "with --quick its quick/ subfolder)")
    return p


def command(name: str, quick: bool) -> str:
    return f"python -m paper_figures --only {name}" + (" --quick" if quick else "")


def draw(module, out: Path, quick: bool) -> float:
    """Draw one figure into ``out``; returns the seconds it took.  MissingInput when a full-run input is absent."""
    if not quick:
        missing = [i.missing_message() for i in module.INPUTS if not i.file.is_file()]
        if missing:
            raise MissingInput("; ".join(missing))
    start = time.perf_counter()
    drawing = module.make(quick)
    save_figure(drawing.figure, out / f"{module.NAME}.png", dpi=DPI)
    seconds = time.perf_counter() - start
    write_json(out / f"{module.NAME}.json", {
        "figure": module.NAME, "title": module.TITLE, "command": command(module.NAME, quick),
        "scale": "quick" if quick else "full", "approxbp": __version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(), "seconds": round(seconds, 2), **drawing.data})
    return seconds


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = parser().parse_args(argv)
    out = args.out or (OUT / "quick" if args.quick else OUT)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create output folder {out}: {e.strerror}", file=sys.stderr)
        return 2
    if not os.access(out, os.W_OK):
        print(f"error: cannot write into output folder {out}: permission denied", file=sys.stderr)
        return 2
    selected = [f for f in FIGURES if args.only is None or f.NAME in args.only]
    skipped = []
    bar = tqdm(selected, unit="figure", file=sys.stderr)
    for module in bar:
        bar.set_postfix_str(module.NAME)
        try:
            seconds = draw(module, out, args.quick)
        except MissingInput as e:
            skipped.append(f"{module.NAME}: {e}")
            continue
        bar.write(f"wrote {out / module.NAME}.png and .json ({seconds:.1f} s)")
    for line in skipped:
        print(f"error: {line}", file=sys.stderr)
    return 1 if skipped else 0
