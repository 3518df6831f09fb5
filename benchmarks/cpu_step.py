"""``python -m benchmarks.cpu_step``: the CPU training step of a converted model against the unconverted one.

Models (random weights, the shapes of real ones): all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, post-LN, GELU) with
a sequence-classification head at 16 x 128 tokens, and a 4-layer LLaMA-style decoder (hidden 512, SwiGLU 1376) at
8 x 128 tokens; fp32, ``--threads`` torch threads (default 2).  A step is zero_grad + forward + loss + backward.
Variants: ``convert(model)`` with its defaults (Approx-BP + MS-BP + packed dropout and LoRA) and with the C loops
switched off (``use_backend("torch")``: the pure-PyTorch reference).

Timing is paired, to stand a shared machine's drifting load: each round times one step of every variant in a
rotating order, and each converted variant's ratio to the baseline is taken within the round; the report gives the
median ratio over the rounds with its quartiles, and the median step time of each variant.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from contextlib import nullcontext

import torch

from approxbp.artifacts import write_json
from benchmarks.env import environment

MODELS = ("minilm", "llama")


QUICK = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
         "vocab_size": 256}  # --quick: the same models shrunk to milliseconds (tests)


def _minilm(quick: bool):
    from transformers import BertConfig, BertForSequenceClassification

    sizes = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536)
    config = BertConfig(**(QUICK if quick else sizes), num_labels=8)
    ids = torch.randint(0, config.vocab_size, (4, 16) if quick else (16, 128))
    return BertForSequenceClassification(config), {"input_ids": ids, "labels": torch.randint(0, 8, (len(ids),))}


def _llama(quick: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = dict(vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8)
    config = LlamaConfig(**(QUICK if quick else sizes), num_key_value_heads=(QUICK if quick else sizes)[
        "num_attention_heads"])
    ids = torch.randint(0, config.vocab_size, (4, 16) if quick else (8, 128))
    return LlamaForCausalLM(config), {"input_ids": ids, "labels": ids}


def variants(name: str, quick: bool = False) -> tuple[dict, dict]:
    """{variant: (model, backend context factory)} for one model, all from the same initial weights."""
    import approxbp
    from approxbp.ops.backend import use_backend

    torch.manual_seed(0)
    base, batch = {"minilm": _minilm, "llama": _llama}[name](quick)
    converted = copy.deepcopy(base)
    approxbp.convert(converted)
    models = {"baseline": (base, nullcontext), "convert": (converted, nullcontext),
              "convert, torch reference": (converted, lambda: use_backend("torch"))}
    for model, _ in models.values():
        model.train()
    return models, batch


def step(model, batch) -> None:
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()


def measure(name: str, rounds: int, warmup: int, quick: bool = False) -> dict:
    models, batch = variants(name, quick)
    names = list(models)
    for _ in range(warmup):
        for model, context in models.values():
            with context():
                step(model, batch)
    seconds = {v: [] for v in names}
    ratios = {v: [] for v in names[1:]}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        times = {}
        for v in order:
            model, context = models[v]
            with context():
                start = time.perf_counter()
                step(model, batch)
                times[v] = time.perf_counter() - start
            seconds[v].append(times[v])
        for v in ratios:
            ratios[v].append(times[v] / times["baseline"])
    result = {"step_s": {v: statistics.median(s) for v, s in seconds.items()}, "ratio": {}}
    for v, values in ratios.items():
        q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
        result["ratio"][v] = {"median": median, "q1": q1, "q3": q3, "rounds": len(values)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_step", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny models (a smoke test, not a measurement)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.models:
        results[name] = measure(name, args.rounds, args.warmup, args.quick)
        for v, r in results[name]["ratio"].items():
            print(f"{name}: {v}: {r['median']:.3f}x the baseline step (quartiles {r['q1']:.3f}..{r['q3']:.3f}, "
                  f"{r['rounds']} rounds; baseline {results[name]['step_s']['baseline']:.3f} s)")
    if args.out:
        given = sys.argv[1:] if argv is None else argv
        write_json(args.out, {"command": " ".join(["python -m benchmarks.cpu_step", *given]),
                              "threads": args.threads, "quick": args.quick, "load_average": list(_load()),
                              "environment": environment("cpu"), "results": results})
    return 0


def _load() -> tuple[float, ...]:
    try:
        import os

        return os.getloadavg()
    except OSError:
        return ()


if __name__ == "__main__":
    raise SystemExit(main())
