"""``python -m benchmarks.run --suite kernels|training|all [--device cuda|cpu] [--quick] [--out PATH.json]``

Runs the kernels suite (``benchmarks.kernels_suite``) and/or the training suite (``benchmarks.training_suite``) and
writes one JSON document (atomically) and a PNG of it beside (same stem).  Default device: CUDA when available.
On CPU the run uses one thread (on a shared machine, threads waiting for each other would dominate the timing), the
approxbp ops run their pure-PyTorch reference and Liger-Kernel is skipped, so a CPU document is labelled as such and
says nothing about GPU speed.  Exit status: 0, 1 when a training variant failed (the document records why), 2 for
bad arguments.

Document (schema "approxbp.benchmarks/1"): schema, label, command, created (UTC), suite, device, quick,
environment (``benchmarks.env``), kernels (``kernels_suite.run``), training (``training_suite.run``); every timing
is {median_s, q1_s, q3_s, min_s, max_s, repeats, warmup}.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

SCHEMA = "approxbp.benchmarks/1"
RESULTS = Path(__file__).resolve().parent / "results"
SUITES = ("kernels", "training", "all")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m benchmarks.run", description="Time approxbp's kernels and training steps on CUDA or "
                                                             "CPU; write a JSON of every timing and a PNG.")
    p.add_argument("--suite", required=True, choices=SUITES)
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available, else cpu")
    p.add_argument("--quick", action="store_true", help="small sizes and tiny models (CPU seconds)")
    p.add_argument("--out", type=Path, help="the JSON to write (default benchmarks/results/<device>_<suite>"
                                            "[_quick].json); the PNG goes beside it")
    p.add_argument("--no-prediction", action="store_true", help="skip the memory profiler's predictions")
    p.add_argument("--decoder-layers", type=positive_int, metavar="N",
                   help="blocks of the LLaMA-7B-shaped decoder (default: as many full-size blocks as fit)")
    return p


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


class UsageError(Exception):
    """A one-line message for the user; exit status 2."""


def resolve_device(requested: str | None) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device cuda: no CUDA device is available to torch {torch.__version__} "
                         f"(CUDA build: {torch.version.cuda or 'none'})")
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and os.environ.get("TRITON_INTERPRET") == "1":
        raise UsageError("TRITON_INTERPRET=1 is set: the Triton kernels would run in the interpreter; unset it to time "
                         "them on the GPU")
    return device


def output_path(out: Path | None, device: str, suite: str, quick: bool) -> Path:
    path = out or RESULTS / f"{device}_{suite}{'_quick' if quick else ''}.json"
    if path.suffix != ".json":
        raise UsageError(f"--out {path}: the results file must end in .json (the PNG is written beside it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {path}: cannot create folder {path.parent}: {e.strerror}") from None
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"--out {path}: cannot write into {path.parent}: permission denied")
    return path


def label(device: str, environment: dict, quick: bool) -> str:
    scale = "quick (small sizes, tiny models)" if quick else "full"
    if device == "cpu":
        return (f"CPU ({environment['cpu']}, 1 thread), {scale}: approxbp ops run their pure-PyTorch reference, "
                "Liger-Kernel skipped; NOT GPU numbers")
    return f"CUDA: {environment['device_name']} (sm_{''.join(map(str, environment['cuda_capability']))}), {scale}"


def document(suite: str, device: str, quick: bool, command: str, predictions: bool = True, log=print,
             kernels_scale=None, training_names: tuple[str, ...] | None = None,
             decoder_layers: int | None = None) -> dict:
    """The results document of ``suite`` on ``device`` (on CPU with one thread); ``kernels_scale`` and
    ``training_names`` narrow the suites (see ``kernels_suite.run`` and ``training_suite.run``)."""
    import torch

    from benchmarks import kernels_suite, training_suite
    from benchmarks.env import environment

    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        env = environment(device)
        doc = {"schema": SCHEMA, "label": label(device, env, quick), "command": command,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "suite": suite, "device": device, "quick": quick, "environment": env}
        if suite in ("kernels", "all"):
            doc["kernels"] = kernels_suite.run(device, quick, log, kernels_scale)
        if suite in ("training", "all"):
            doc["training"] = training_suite.run(device, quick, predictions, log, training_names, decoder_layers)
    finally:
        torch.set_num_threads(threads)
    return doc


def failures(doc: dict) -> list[str]:
    return [f"{s['name']} {name}: {v['failed']}" for s in doc.get("training", {}).get("settings", [])
            for name, v in s["variants"].items() if "failed" in v]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
        out = output_path(args.out, device, args.suite, args.quick)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from approxbp.artifacts import save_figure, write_json
    from benchmarks.plot import draw
    from benchmarks.summary import render

    command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = document(args.suite, device, args.quick, command, not args.no_prediction,
                   lambda line: print(line, file=sys.stderr), decoder_layers=args.decoder_layers)
    write_json(out, doc)
    save_figure(draw(doc), out.with_suffix(".png"))
    print(render(doc))
    print(f"wrote {out} and {out.with_suffix('.png').name}")
    failed = failures(doc)
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
