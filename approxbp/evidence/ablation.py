"""Ablation of the Approx-BP backward tables: train the llama and minilm tasks with every table of
``approxbp.evidence.tables.specs()`` (primitive = the paper's, derivative = h' under a normal weight, empirical =
per-layer calibrated, relu = 1 bit; bits 1..4 where they make sense) and the exact baseline, same seeds and batches.

Every converted run uses MS-BP norms too: ``convert(model, norms="ms", **spec.convert_options(calibration))``.
Empirical tables are calibrated once, on the freshly built (seeded) model in eval mode, on ``CALIBRATION_BATCHES``
training batches drawn from a fixed generator (not the training order); they are not recalibrated during training.
Per row:
- final_metric: the task's validation metric at the end (llama: validation loss, lower is better; minilm:
  accuracy, higher is better);
- grad_rel_error: ||g_table - g_exact|| / ||g_exact|| over all trainable parameters' gradients together, on one fixed
  probe batch (eval mode, norms exact so that only the activation backward differs), at the start of training (the
  seeded initial weights, the same for every table); grad_rel_error_end: the same at the run's own final weights
  (the trained model reverted, then converted with the same tables and norms=None);
- J: the paper's objective integral (h - h~)^2 of the table as sum a_i relu(x - c_i) (a = level jumps, c =
  thresholds), when the table is one (levels from 0 to 1 with sum a c = 0); the largest over layers; else null;
- sup_gap: sup |h' - s| of the table (largest over layers);
- saved_bytes_per_element: bytes autograd keeps for the activation per pre-activation (gate) element, fp32,
  measured with ``record_saved`` on the converted module (baseline: torch's own GELU / silu(gate) * up).
The answer compares each table with the paper's at the same bits (the 1-bit ones with primitive-2) on the final
metric: a paired t-test over seeds (primary: same seed, same init and batches) and Welch's t-test.

    python -m approxbp.evidence.ablation [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from tqdm import tqdm

from approxbp.calibration import calibrate
from approxbp.conversion import convert, revert
from approxbp.evidence import train
from approxbp.evidence.tables import TableSpec, specs, sup_gap
from approxbp.fit.emit import write_atomic
from approxbp.fit.primitive import objective
from approxbp.saved import record_saved
from approxbp.targets import get_target

EXPERIMENTS = {  # name -> (tuning, scale, activation target)
    "llama": ("full", replace(train.SCALES["llama"], hidden=64, layers=2, val_every=50), "silu"),
    "minilm": ("lora", train.SCALES["minilm"], "gelu"),
}
QUICK = {
    "llama": ("full", train.QUICK["llama"], "silu"),
    "minilm": ("lora", replace(train.QUICK["minilm"], steps=4), "gelu"),
}
CALIBRATION_BATCHES = 4
SEEDS = 3
OUT = Path("paper_figures/data/ablation.json")


def table_j(table, target: str) -> float | None:
    """J(a, c) of the step table read as sum a_i relu(x - c_i), or None when it is not such a table."""
    levels = np.asarray(table.levels)
    a, c = np.diff(levels), np.asarray(table.thresholds)
    if abs(levels[0]) > 1e-9 or abs(levels[-1] - 1) > 1e-9 or abs(a @ c) > 1e-6:
        return None
    return objective(get_target(target), a, c)


def saved_per_element(module: torch.nn.Module | None, target: str, gated: bool) -> float:
    """Bytes saved for backward per pre-activation element by ``module`` (None: torch's exact op), fp32."""
    gate = torch.randn(64, 256, requires_grad=True)
    up = torch.randn(64, 256, requires_grad=True)
    exact = F.silu if target == "silu" else F.gelu
    with record_saved() as saved:
        if module is None:
            exact(gate) * up if gated else exact(gate)
        else:
            module(gate, up) if gated else module(gate)
    return saved.bytes / gate.numel()


def gradients(model: torch.nn.Module, task: train.Task, batch: tuple) -> torch.Tensor:
    """All trainable parameters' gradients on ``batch`` in eval mode, flattened into one fp64 vector."""
    model.eval()
    model.zero_grad(set_to_none=True)
    task.loss(model, batch).backward()
    grads = torch.cat([p.grad.double().flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return grads


def gradient_error(model: torch.nn.Module, task: train.Task, batch: tuple, options: dict) -> float:
    """Relative error of the gradients of ``model`` (unconverted) converted with ``options`` and norms=None."""
    exact = gradients(model, task, batch)
    converted = copy.deepcopy(model)
    convert(converted, **{**options, "norms": None})
    return float((gradients(converted, task, batch) - exact).norm() / exact.norm())


def table_options(spec: TableSpec, model: torch.nn.Module, calibration: list[dict]) -> dict:
    """convert() options of ``spec``; per-layer calibrated tables are fitted here, once, on the unconverted model."""
    options = spec.convert_options(calibration)
    if "calibration_data" in options:
        del options["calibration_data"]
        model.eval()
        options["tables"] = calibrate(model, calibration, bits=spec.bits)
    return options


def one_run(task: train.Task, tuning: str, target: str, table: TableSpec | None, seed: int, calibration: list[dict],
            probe: tuple, progress) -> dict:
    torch.manual_seed(seed)
    model = task.build(tuning).eval()
    options = None if table is None else table_options(table, model, calibration)
    error_start = 0.0 if options is None else gradient_error(model, task, probe, options)
    report = None if options is None else convert(model, norms="ms", **options)
    record = train.train_run(task, tuning, seed, None, model=model, progress=progress)
    modules = dict(model.named_modules())
    tables = [] if report is None else [modules[name].table for name in report.activations]
    gated = target == "silu"
    if options is None:
        error_end, j, gap, saved = 0.0, None, 0.0, saved_per_element(None, target, gated)
    else:
        revert(model)
        error_end = gradient_error(model, task, probe, options)
        js = [table_j(t, target) for t in tables]
        j = None if None in js else max(js)
        gap = max(sup_gap(t, target) for t in tables)
        saved = saved_per_element(modules[report.activations[0]], target, gated)
    return {"table": "baseline" if table is None else table.name, "kind": "baseline" if table is None else table.kind,
            "bits": None if table is None else table.bits, "seed": seed, "final_metric": record["final"][task.metric],
            "final_val_loss": record["final"]["val_loss"], "grad_rel_error": error_start,
            "grad_rel_error_end": error_end, "J": j, "sup_gap": gap, "saved_bytes_per_element": saved,
            "train_loss": record["train_loss"], "seconds": record["seconds"]}


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for experiment, table in dict.fromkeys((r["experiment"], r["table"]) for r in rows):
        chosen = [r for r in rows if r["experiment"] == experiment and r["table"] == table]
        values = [r["final_metric"] for r in chosen]
        out.append({"experiment": experiment, "table": table, "bits": chosen[0]["bits"],
                    "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "n": len(values),
                    "grad_rel_error": statistics.fmean(r["grad_rel_error"] for r in chosen),
                    "grad_rel_error_end": statistics.fmean(r["grad_rel_error_end"] for r in chosen)})
    return out


def _p(test) -> float:
    return float(test.pvalue) if np.isfinite(test.pvalue) else 1.0  # nan: no variation at all, no evidence


def comparisons(rows: list[dict], higher_is_better: dict[str, bool]) -> list[dict]:
    """Each table against the paper's at equal bits (1-bit tables against primitive-2) on the final metric:
    Welch's t-test, and the paired t-test over seeds (same seed = same init and batches, so the seed-to-seed spread
    cancels in the differences: the primary test).  ``better`` is the mean improvement in the metric's good
    direction."""
    result = []
    for experiment, sign in ((e, 1 if h else -1) for e, h in higher_is_better.items()):
        finals: dict[str, dict[int, float]] = {}
        for r in rows:
            if r["experiment"] == experiment:
                finals.setdefault(r["table"], {})[r["seed"]] = r["final_metric"]
        for name, values in finals.items():
            reference = None if name == "baseline" else f"primitive-{max(2, int(name.split('-')[1]))}"
            if reference is None or name == reference or reference not in finals or len(values) < 2:
                continue
            seeds = sorted(values.keys() & finals[reference].keys())
            ours, theirs = [values[s] for s in seeds], [finals[reference][s] for s in seeds]
            result.append({"experiment": experiment, "table": name, "reference": reference, "seeds": len(seeds),
                           "better": sign * (statistics.fmean(ours) - statistics.fmean(theirs)),
                           "paired_p_value": _p(stats.ttest_rel(ours, theirs)),
                           "welch_p_value": _p(stats.ttest_ind(ours, theirs, equal_var=False))})
    return result


def answer(tests: list[dict], alpha: float = 0.05) -> str:
    winners = [t for t in tests if t["better"] > 0 and t["paired_p_value"] < alpha]
    losers = [t for t in tests if t["better"] < 0 and t["paired_p_value"] < alpha]

    def describe(group: list[dict]) -> str:
        return "; ".join(f"{t['experiment']} {t['table']} vs {t['reference']}: {t['better']:+.4g} (paired p = "
                         f"{t['paired_p_value']:.3g}, Welch p = {t['welch_p_value']:.3g})" for t in group)

    method = (f"paired t-test over seeds on the final metric, p < {alpha}, {len(tests)} comparisons, not corrected "
              "for multiplicity")
    worse = f" Measurably worse than the paper's: {describe(losers)}." if losers else ""
    if not winners:
        return (f"No table trains measurably better than the paper's primitive table at the same bits ({method}): "
                f"nothing argues for changing convert()'s default.{worse}")
    return (f"Tables that train measurably better than the paper's at the same bits ({method}): "
            f"{describe(winners)}.{worse}")


def run(quick: bool = False, out: Path | None = OUT, seeds: int = SEEDS, tables: list[TableSpec] | None = None,
        experiments: tuple[str, ...] = tuple(EXPERIMENTS), progress: bool = True) -> dict:
    """Train every (experiment, table, seed), write ``out`` (None: nothing written) and return the document."""
    tables = specs() if tables is None else tables
    if not experiments or any(name not in EXPERIMENTS for name in experiments):
        raise ValueError(f"experiments must be a non-empty subset of {', '.join(EXPERIMENTS)}, got {experiments}")
    plan = {name: (QUICK if quick else EXPERIMENTS)[name] for name in experiments}
    tasks = {name: train.TASKS[name](scale) for name, (_, scale, _) in plan.items()}
    total = sum(task.scale.steps for task in tasks.values()) * seeds * (len(tables) + 1)
    bar = tqdm(total=total, desc="ablation", unit="step", disable=not progress)
    rows: list[dict] = []
    for name, (tuning, _, target) in plan.items():
        task = tasks[name]
        fixed = task.batches(torch.Generator().manual_seed(12345))
        calibration = [task.inputs(next(fixed)) for _ in range(CALIBRATION_BATCHES)]
        probe = next(fixed)
        for seed in range(seeds):
            for table in [None, *tables]:
                bar.set_postfix_str(f"{name} {'baseline' if table is None else table.name} seed {seed}")
                rows.append({"experiment": name, **one_run(task, tuning, target, table, seed, calibration, probe,
                                                           lambda: bar.update())})
        document = make_document(rows, plan, tasks, quick, seeds)
        if out is not None:  # after each experiment, so that a long run keeps what it finished
            write_atomic(Path(out), json.dumps(document, indent=1) + "\n")
    bar.close()
    return document


def make_document(rows: list[dict], plan: dict, tasks: dict, quick: bool, seeds: int) -> dict:
    """The ablation document of the experiments that have rows so far."""
    plan = {name: entry for name, entry in plan.items() if any(r["experiment"] == name for r in rows)}
    higher = {name: tasks[name].higher_is_better for name in plan}
    tests = comparisons(rows, higher)
    document = {
        "command": "python -m approxbp.evidence.ablation " + " ".join(sys.argv[1:]) if __name__ == "__main__"
        else f"approxbp.evidence.ablation.run(quick={quick}, seeds={seeds})",
        "machine": platform.platform(), "torch": torch.__version__,
        "experiments": {name: {"metric": tasks[name].metric, "higher_is_better": higher[name],
                               "config": {"tuning": tuning, "target": target, "scale": vars(tasks[name].scale),
                                          "calibration_batches": CALIBRATION_BATCHES, "norms": "ms"}}
                        for name, (tuning, _, target) in plan.items()},
        "seeds": list(range(seeds)), "rows": rows, "summary": summarize(rows), "comparisons": tests,
        "answer": answer(tests),
    }
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI scale (tiny models, few steps)")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error(f"--seeds must be at least 2 (the t-test needs them), got {args.seeds}")
    document = run(args.quick, args.out, args.seeds)
    for row in document["summary"]:
        print(f"{row['experiment']:7s} {row['table']:13s} {row['mean']:.4f} +- {row['std']:.4f} (n {row['n']}) "
              f"grad error {row['grad_rel_error']:.3f} -> {row['grad_rel_error_end']:.3f}")
    print(document["answer"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
