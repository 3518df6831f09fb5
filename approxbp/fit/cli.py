"""``python -m approxbp.fit``: fit, print, emit and plot Approx-BP backward tables."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from approxbp.fit.api import fit, official
from approxbp.fit.emit import SHIPPED_BITS, check_writable, default_path, emit, load_tables
from approxbp.fit.official_constants import OFFICIAL
from approxbp.fit.result import MAX_BITS, OBJECTIVES, SHIPPED_OBJECTIVES, FitResult
from approxbp.targets import TARGET_NAMES

PLOT_FORMATS = (".png", ".pdf", ".svg")


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m approxbp.fit", description=__doc__)
    p.add_argument("--target", default="gelu", help=f"one of {', '.join(TARGET_NAMES)}, or all")
    p.add_argument("--bits", type=int, default=None, help=f"1..{MAX_BITS} (default 2; with --emit: all)")
    p.add_argument("--objective", default=None,
                   help=f"one of {', '.join(OBJECTIVES)} (default primitive; with --emit: primitive and derivative)")
    p.add_argument("--weight", default="normal", help="derivative objective: normal (default) or uniform")
    p.add_argument("--range", type=float, default=None, help="half-width R of the uniform weight on [-R, R]")
    p.add_argument("--samples", type=Path, default=None,
                   help="empirical objective: .npy or .pt array of pre-activations, or histogram .npz")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--emit", nargs="?", type=Path, const=True, default=None, metavar="PATH",
                   help="write the tables into the kernels' constants module (or PATH)")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE", help="plot h vs h~ and h' vs h~' to FILE")
    return p


def _plan(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    if args.target != "all" and args.target not in TARGET_NAMES:
        raise UsageError(f"unknown target {args.target!r}; valid targets: {', '.join(TARGET_NAMES)}, all")
    if args.bits is not None and not 1 <= args.bits <= MAX_BITS:
        raise UsageError(f"--bits must be in 1..{MAX_BITS}, got {args.bits}")
    if args.objective is not None and args.objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {args.objective!r}; valid objectives: {', '.join(OBJECTIVES)}")
    if (args.objective == "empirical") != (args.samples is not None):
        raise UsageError("--samples FILE goes with --objective empirical (and only with it)")
    if args.samples is not None and not args.samples.is_file():
        raise UsageError(f"--samples: no such file {args.samples}")
    if args.emit is not None and args.objective == "empirical":
        raise UsageError("empirical tables are per-layer calibrations and are not emitted; "
                         f"--emit takes objectives {', '.join(SHIPPED_OBJECTIVES)}")
    if args.emit is not None and (args.weight != "normal" or args.range is not None):
        raise UsageError("the shipped derivative tables use the normal weight; drop --weight/--range with --emit")
    if args.objective != "derivative" and (args.weight != "normal" or args.range is not None):
        raise UsageError("--weight and --range apply only to --objective derivative")
    targets = TARGET_NAMES if args.target == "all" else (args.target,)
    if args.emit is not None:
        bits = SHIPPED_BITS if args.bits is None else (args.bits,)
        objectives = SHIPPED_OBJECTIVES if args.objective is None else (args.objective,)
    else:
        bits = (2,) if args.bits is None else (args.bits,)
        objectives = ("primitive",) if args.objective is None else (args.objective,)
    plan = [(t, b, o) for t in targets for b in bits for o in objectives]
    if args.plot is not None and len(plan) != 1:
        raise UsageError(f"--plot draws one table, but this command fits {len(plan)}")
    return plan


def _check_outputs(args: argparse.Namespace) -> Path | None:
    """Fail before fitting if an output cannot be written, so nothing is half-done."""
    emit_path = None
    if args.emit is not None:
        emit_path = default_path() if args.emit is True else args.emit
        check_writable(emit_path)
        load_tables(emit_path)  # an existing file must be one --emit wrote: it is merged into
    if args.plot is not None:
        if args.plot.suffix.lower() not in PLOT_FORMATS:
            raise UsageError(f"--plot: unsupported format {args.plot.suffix!r}; use {', '.join(PLOT_FORMATS)}")
        check_writable(args.plot)
    return emit_path


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.10f}" for v in values) + ")"


def describe(result: FitResult) -> str:
    ev = result.evidence
    lines = [f"{result.target}  bits={result.bits}  objective={result.objective}"
             + (f"  weight={result.weight}" if result.weight else "")]
    if result.a is not None:
        lines += [f"  a           {_fmt(result.a)}", f"  c           {_fmt(result.c)}"]
    lines += [f"  thresholds  {_fmt(result.thresholds)}", f"  levels      {_fmt(result.levels)}",
              f"  objective   {result.objective_value:.10g}", f"  sup|h'-h~'| {result.sup_error:.6f}",
              f"  symmetric   {'yes' if result.symmetry_defect < 1e-8 else 'no'}"
              f" (defect {result.symmetry_defect:.1e})"]
    evidence = {k: v for k, v in ev.__dict__.items() if v is not None}
    lines.append("  evidence    " + ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in evidence.items()))
    if result.objective == "primitive" and result.bits == 2 and result.target in OFFICIAL:
        ref = official(result.target).objective_value
        gain = 100 * (1 - result.objective_value / ref)
        lines.append(f"  official    LowMemoryBP J = {ref:.10g}; ours is {gain:.4f}% lower")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = _plan(args)
    emit_path = _check_outputs(args)
    results = [fit(t, b, o, samples=args.samples, weight=args.weight, range=args.range) for t, b, o in plan]
    if args.json:
        payload = [r.to_dict() for r in results]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
    else:
        print("\n\n".join(describe(r) for r in results))
    if emit_path is not None:
        emit(results, emit_path)
        print(f"wrote {len(results)} tables to {emit_path}", file=sys.stderr)
    if args.plot is not None:
        from approxbp.fit.plot import plot_fit

        plot_fit(results[0], args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except (UsageError, ValueError, OSError) as err:
        print(f"approxbp.fit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
