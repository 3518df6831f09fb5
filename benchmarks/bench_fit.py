"""Time the fitter: every shipped target x bits 1..4 x objective in-process, and the user-facing CLI commands in
fresh processes (import included).  Writes benchmarks/data/fit_times.json (and prints a table).

    python benchmarks/bench_fit.py [--repeat 3] [--out benchmarks/data/fit_times.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy

from approxbp.fit import fit
from approxbp.fit.emit import SHIPPED_BITS, SHIPPED_OBJECTIVES, write_atomic
from approxbp.targets import TARGET_NAMES, get_target

CLI_COMMANDS = (["--target", "gelu"], ["--target", "silu"], ["--target", "all", "--bits", "2"],
                ["--target", "gelu", "--bits", "4"], ["--target", "silu", "--bits", "4"])


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "numpy": np.__version__, "scipy": scipy.__version__}


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "fit_times.json")
    args = parser.parse_args()

    fits = []
    for name in TARGET_NAMES:
        get_target(name)  # build the sympy callables once; the CLI timings below include this
        for bits in SHIPPED_BITS:
            for objective in SHIPPED_OBJECTIVES:
                seconds, r = best_of(args.repeat, lambda: fit(name, bits, objective))  # noqa: B023
                fits.append({"target": name, "bits": bits, "objective": objective, "seconds": round(seconds, 4),
                             "objective_value": r.objective_value, "sup_error": r.sup_error})
                print(f"{name:10s} bits={bits} {objective:10s} J={r.objective_value:.10g}  {seconds:7.3f} s")
    cli = []
    for cmd in CLI_COMMANDS:
        full = [sys.executable, "-m", "approxbp.fit", *cmd]
        seconds, _ = best_of(args.repeat, lambda: subprocess.run(full, check=True, capture_output=True))  # noqa: B023
        cli.append({"command": "python -m approxbp.fit " + " ".join(cmd), "seconds": round(seconds, 3)})
        print(f"{cli[-1]['command']:48s} {seconds:7.3f} s (fresh process)")
    report = {"machine": machine(), "repeat": args.repeat, "timing": "best of repeat, wall clock",
              "fits": fits, "cli": cli}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
