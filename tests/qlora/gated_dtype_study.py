"""What ``convert(gated_dtype=torch.bfloat16)`` changes in a QLoRA step (tiny NF4 LLaMA, peft's recipe, LoRA r8 on
every linear layer, dropout 0.1, one seeded step): per-parameter relative gradient errors (median and max over the
LoRA weights) of each bf16-autocast run against the fp32 run of the same model (NF4 weights dequantized to fp32, fp32
compute, no autocast), and of the gated-dtype run against the same conversion without it.  Also where MS-BP alone
(``approx=None``) departs from peft's step under autocast: its MS-RMSNorms return bf16 y where HF's upcast RMSNorm
returns fp32, and with y kept in fp32 (the norms run outside autocast) their rstd still differs from HF's in the last
fp32 bit.  Saved bytes from the same runs.  ``python tests/qlora/gated_dtype_study.py [dropout]`` prints the tables."""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import warnings

import torch
from qlora_models import load_quantized, qlora, relative, run, save_tiny_llama

from approxbp.conversion import convert
from approxbp.modules.ms_norm import MSRMSNorm
from approxbp.saved import record_saved

FP32_Y = "MS norms outside autocast"  # an option of this study, not of convert
# name -> (convert options or None for peft's model, whether it runs under bf16 autocast with bf16 compute)
RUNS = {
    "peft, fp32": (None, False),
    "peft, bf16 autocast": (None, True),
    "convert(), fp32": ({}, False),
    "convert(), bf16 autocast": ({}, True),
    "convert(gated_dtype=bf16), bf16 autocast": ({"gated_dtype": torch.bfloat16}, True),
    "convert(approx=None), fp32": ({"approx": None}, False),
    "convert(approx=None), bf16 autocast": ({"approx": None}, True),
    "convert(approx=None), bf16 autocast, fp32 y": ({"approx": None, FP32_Y: True}, True),
}
# (run, reference) pairs the study reports
PAIRS = (("peft, bf16 autocast", "peft, fp32"), ("convert(), bf16 autocast", "convert(), fp32"),
         ("convert(gated_dtype=bf16), bf16 autocast", "convert(), fp32"),
         ("convert(gated_dtype=bf16), bf16 autocast", "convert(), bf16 autocast"),
         ("convert(), bf16 autocast", "peft, bf16 autocast"),
         ("convert(gated_dtype=bf16), bf16 autocast", "peft, bf16 autocast"),
         ("convert(), fp32", "peft, fp32"), ("convert(approx=None), fp32", "peft, fp32"),
         ("convert(approx=None), bf16 autocast", "peft, bf16 autocast"),
         ("convert(approx=None), bf16 autocast, fp32 y", "peft, bf16 autocast"))


def fp32_norm_outputs(model) -> None:
    """Run every MSRMSNorm of ``model`` with autocast off: y in its input's dtype (fp32 here), as HF's norm."""
    for norm in model.modules():
        if isinstance(norm, MSRMSNorm):
            forward = norm.forward
            norm.forward = lambda x, forward=forward: torch.autocast("cpu", enabled=False)(forward)(x)


def step(folder, options: dict | None, autocast: bool, dropout: float) -> tuple[dict[str, torch.Tensor], int]:
    """({LoRA parameter: gradient}, saved bytes) of one seeded step of the QLoRA model in ``folder``."""
    model = qlora(load_quantized(folder, torch.bfloat16 if autocast else torch.float32), dropout)
    if options is not None:
        fp32_y = options.pop(FP32_Y, False)
        convert(model, **options)
        if fp32_y:
            fp32_norm_outputs(model)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), record_saved(model) as saved:
        grads = run(model)[2]
    return grads, saved.bytes


def study(folder, dropout: float = 0.1) -> tuple[dict[str, int], dict[tuple[str, str], tuple[float, float]]]:
    """(saved bytes per run, {(run, reference): (median, max) relative gradient error per parameter})."""
    results = {name: step(folder, copy.deepcopy(options), autocast, dropout)
               for name, (options, autocast) in RUNS.items()}
    errors = {}
    for name, reference in PAIRS:
        got, expected = results[name][0], results[reference][0]
        values = [relative(got[k], expected[k]) for k in expected]
        errors[name, reference] = (statistics.median(values), max(values))
    return {name: nbytes for name, (_, nbytes) in results.items()}, errors


def main() -> None:
    warnings.simplefilter("ignore")
    dropout = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1
    with tempfile.TemporaryDirectory() as folder:
        save_tiny_llama(folder)
        saved, errors = study(folder, dropout)
    print("| run | saved bytes |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in saved.items()))
    print("\n| run | reference | median relative gradient error | max |\n|---|---|---|---|")
    for (name, reference), (median, worst) in errors.items():
        print(f"| {name} | {reference} | {median:.2e} | {worst:.2e} |")


if __name__ == "__main__":
    main()
