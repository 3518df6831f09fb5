"""``python -m approxbp.memory``: the activation-memory table of a model and fine-tuning setting.

Arguments and the config's shape fields are checked before torch and transformers are imported (``--help`` and
argument errors never load them); the profiler's modules are imported once the input is known to be good."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from approxbp.memory.presets import PRESETS, TUNINGS, check_fields, config_fields

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}  # the keys of approxbp.memory.models.DTYPES, without torch
KERNEL_NAMES = ("gpu", "cpu")  # approxbp.memory.models.KERNELS
GATED_DTYPE_NAMES = ("bf16", "fp16")  # --gated-dtype: the 16-bit keys of DTYPE_BYTES
REAL_LIMIT = 2 * 2**30  # bytes a --real run may allocate (weights + activations, estimated) unless --force
_SHAPE_NAMES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")  # also aliases
_LLAMA_LIKE = {"llama", "mistral", "qwen2"}  # gated MLP (gate, up, down linears) and rotary positions


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
    p.add_argument("--dtype", choices=tuple(DTYPE_BYTES), help="weights and activations; default: the preset's")
    p.add_argument("--kernels", choices=KERNEL_NAMES, default="gpu",
                   help="gpu: count what the GPU attention and dropout kernels keep (default); cpu: what this CPU "
                        "keeps (see approxbp.memory.models)")
    p.add_argument("--layers", type=_positive, help="number of blocks (default: the config's)")
    p.add_argument("--lora-rank", type=_positive)
    p.add_argument("--lora-dropout", type=_fraction)
    p.add_argument("--lora-targets", help="comma-separated module names (peft target_modules)")
    p.add_argument("--real", action="store_true",
                   help=f"real CPU tensors instead of fake ones; refused when weights + activations are estimated "
                        f"above {REAL_LIMIT / 2**30:.0f} GiB")
    p.add_argument("--force", action="store_true",
                   help="run --real above that estimate (more than 2 GiB of weights stays refused by approxbp.memory)")
    p.add_argument("--checkpointing", action="store_true",
                   help="also profile the baseline and both under activation checkpointing of every block (the "
                        "paper's Figure 1 comparison); the table states the recompute peak of one block")
    p.add_argument("--gated-dtype", choices=GATED_DTYPE_NAMES,
                   help="Approx-BP and both: convert(gated_dtype=...), the fused gated MLP activation in this dtype "
                        "(for --tuning qlora: bf16; rounds gate and up, not exact)")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    return p


def _lora_targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets:
        raise ValueError("--lora-targets names no module")
    return targets


def real_bytes(fields: dict, batch: int, seq: int, dtype: str, kernels: str) -> tuple[int, int]:
    """(weights, activations) bytes a real-tensor run allocates, estimated from the config's shape fields:
    weights L (2 d^2 + 2 d d_kv + m d i) + embeddings (V d, twice when the head is untied, + positions d when
    learned (not rotary); (3 p^2 + T) d for patches; biases and norms left out),
    m = 3 for a gated MLP, else 2 (i = 4 d without intermediate_size); activations B T L (10 d + (m + 1) i) elements,
    plus 3 heads T per token for the probabilities, mask and dropped probabilities that CPU attention keeps."""
    d, layers = fields["hidden_size"], fields["num_hidden_layers"]
    i = fields.get("intermediate_size") or 4 * d  # T5's d_ff, GPT-2's n_inner, Swin's mlp_ratio: taken as 4 d
    heads = fields.get("num_attention_heads") or 1  # Swin: heads per stage (a list), not counted
    d_kv = d * (fields.get("num_key_value_heads") or heads) // heads
    llama_like = fields.get("model_type") in _LLAMA_LIKE
    m = 3 if llama_like else 2
    if "patch_size" in fields:
        embeddings = (3 * fields["patch_size"] ** 2 + seq) * d
    else:
        untied = not fields.get("tie_word_embeddings", True)
        positions = 0 if llama_like else fields.get("max_position_embeddings", 0)
        embeddings = (fields.get("vocab_size", 0) * (1 + untied) + positions) * d
    element = DTYPE_BYTES[dtype]
    weights = (layers * (2 * d * d + 2 * d * d_kv + m * d * i) + embeddings) * element
    per_token = 10 * d + (m + 1) * i + (3 * heads * seq if kernels == "cpu" else 0)
    return weights, batch * seq * layers * per_token * element


def _check_real_size(weights: int, activations: int) -> None:
    if weights + activations > REAL_LIMIT:
        raise ValueError(f"a real-tensor run would allocate {weights / 2**30:.1f} GiB of weights and about "
                         f"{activations / 2**30:.1f} GiB of activations (estimated; limit {REAL_LIMIT / 2**30:.0f} "
                         f"GiB); drop --real (fake tensors, the default, count the same bytes) or pass --force")


def setting_from_args(args: argparse.Namespace):
    """(display name, Setting) for parsed arguments; one-line ValueErrors for bad input, before any model is built.
    The config fields config.json holds are checked before transformers (and torch) is imported, then all of them."""
    fields = config_fields(args.model)
    layers = {"num_hidden_layers": args.layers} if args.layers else {}
    check_fields(fields | layers)
    targets = _lora_targets(args.lora_targets) if args.lora_targets is not None else None
    from approxbp.memory.measurement import Setting
    from approxbp.memory.presets import resolve

    name, preset = resolve(args.model)
    config = preset.config()
    aliases = {n: getattr(config, n) for n in _SHAPE_NAMES if isinstance(getattr(config, n, None), int)}
    fields = config.to_dict() | aliases | layers  # with the class defaults, and hidden_size for T5's d_model, ...
    check_fields(fields)
    lora = preset.lora
    if args.lora_rank is not None:
        lora = replace(lora, rank=args.lora_rank)
    if args.lora_dropout is not None:
        lora = replace(lora, dropout=args.lora_dropout)
    if targets is not None:
        lora = replace(lora, targets=targets)
    setting = Setting(preset.config, args.batch or preset.batch, args.seq or preset.seq, args.dtype or preset.dtype,
                      args.tuning or preset.tuning, lora, args.kernels, fake=not args.real, layers=args.layers,
                      checkpointing=args.checkpointing, gated_dtype=args.gated_dtype)
    if args.real and not args.force:
        _check_real_size(*real_bytes(fields, setting.batch, setting.seq, setting.dtype, setting.kernels))
    return name, setting


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        name, setting = setting_from_args(args)
        from approxbp.memory.measurement import measure

        measurement = measure(setting)
    except ValueError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    from approxbp.memory.report import to_json
    from approxbp.memory.table import render

    doc = to_json(name, setting, measurement)
    print(json.dumps(doc, indent=1) if args.json else render(doc))
    return 0
