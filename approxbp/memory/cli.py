"""``python -m approxbp.memory``: the activation-memory table of a model and fine-tuning setting."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from approxbp.memory.measurement import Setting, measure
from approxbp.memory.models import DTYPES, KERNELS
from approxbp.memory.presets import PRESETS, TUNINGS, resolve
from approxbp.memory.report import to_json
from approxbp.memory.table import render


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m approxbp.memory",
                description="Activation bytes autograd keeps per transformer block and for the whole model, by op "
                            "kind, for the baseline, Approx-BP, MS-BP and both, beside the analytic minimum.")
    p.add_argument("--model", required=True,
                   help=f"a preset ({', '.join(PRESETS)}) or the path of an HF config.json (or its folder)")
    p.add_argument("--tuning", choices=TUNINGS, help="default: the preset's")
    p.add_argument("--batch", type=_positive, help="default: the preset's")
    p.add_argument("--seq", type=_positive, help="tokens per sample (vision: patches + 1); default: the preset's")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="weights and activations; default: the preset's")
    p.add_argument("--kernels", choices=KERNELS, default="gpu",
                   help="gpu: count what the GPU attention and dropout kernels keep (default); cpu: what this CPU "
                        "keeps (see approxbp.memory.models)")
    p.add_argument("--layers", type=_positive, help="number of blocks (default: the config's)")
    p.add_argument("--lora-rank", type=_positive)
    p.add_argument("--lora-dropout", type=_fraction)
    p.add_argument("--lora-targets", help="comma-separated module names (peft target_modules)")
    p.add_argument("--real", action="store_true", help="real CPU tensors instead of fake ones (small shapes only)")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    return p


def setting_from_args(args: argparse.Namespace) -> tuple[str, Setting]:
    name, preset = resolve(args.model)
    lora = preset.lora
    if args.lora_rank is not None:
        lora = replace(lora, rank=args.lora_rank)
    if args.lora_dropout is not None:
        lora = replace(lora, dropout=args.lora_dropout)
    if args.lora_targets is not None:
        targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
        if not targets:
            raise ValueError("--lora-targets names no module")
        lora = replace(lora, targets=targets)
    return name, Setting(preset.config, args.batch or preset.batch, args.seq or preset.seq,
                         args.dtype or preset.dtype, args.tuning or preset.tuning, lora, args.kernels,
                         fake=not args.real, layers=args.layers)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        name, setting = setting_from_args(args)
        measurement = measure(setting)
    except ValueError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    doc = to_json(name, setting, measurement)
    print(json.dumps(doc, indent=1) if args.json else render(doc))
    return 0
