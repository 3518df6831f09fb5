"""Figure 7: the ablation of the Approx-BP backward tables (``approxbp.evidence.ablation``): every table kind
(primitive = the paper's, derivative = h' under a normal weight, empirical = per-layer calibrated, relu = 1 bit) at
each bits, trained with the same seeds and batches as the exact baseline, MS-BP norms throughout.

One column per experiment.  Top: the final validation metric per table against bits, mean over seeds (marker) and
min-max over seeds (error bar); the exact baseline's mean (line) and min-max (band).  Bottom: the relative error of
all weight gradients against the exact backward on a fixed probe batch, at the start of training (filled, solid) and
at each run's final weights (hollow, dashed), mean over seeds.  The paper's table (primitive, 2 bits) is ringed.
"""

from __future__ import annotations

import textwrap

import numpy as np

from paper_figures import studies
from paper_figures.base import Drawing

NAME = "ablation"
TITLE = "Ablation of the backward tables: final metric and weight-gradient error per table kind and bits"
INPUTS = (studies.ABLATION,)
KINDS = {"primitive": ("C0", "o"), "derivative": ("C1", "s"), "empirical": ("C2", "D"), "relu": ("C3", "^")}
PAPER_TABLE = "primitive-2"


def stats(values: list[float]) -> dict:
    return {"values": values, "mean": float(np.mean(values)), "min": min(values), "max": max(values),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def experiment_summary(doc: dict, experiment: str) -> dict:
    """Per table: bits, kind and the seeds' final metric, gradient errors and saved bytes per element."""
    rows = [r for r in doc["rows"] if r["experiment"] == experiment]
    unknown = {r["kind"] for r in rows} - {"baseline", *KINDS}
    if unknown:
        raise ValueError(f"{experiment}: unknown table kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
    tables = {}
    for table in dict.fromkeys(r["table"] for r in rows):
        mine = sorted((r for r in rows if r["table"] == table), key=lambda r: r["seed"])
        tables[table] = {"kind": mine[0]["kind"], "bits": mine[0]["bits"], "seeds": [r["seed"] for r in mine],
                         "final_metric": stats([r["final_metric"] for r in mine]),
                         "grad_rel_error": stats([r["grad_rel_error"] for r in mine]),
                         "grad_rel_error_end": stats([r["grad_rel_error_end"] for r in mine]),
                         "J": mine[0]["J"], "sup_gap": mine[0]["sup_gap"],
                         "saved_bytes_per_element": mine[0]["saved_bytes_per_element"]}
    e = doc["experiments"][experiment]
    return {"experiment": experiment, "metric": e["metric"], "higher_is_better": e["higher_is_better"],
            "config": e["config"], "tables": tables}


def draw(experiments: list[dict], answer: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(experiments), figsize=(6.5 * len(experiments) + 2, 9.5), squeeze=False)
    for col, e in enumerate(experiments):
        ax_metric, ax_grad = axes[:, col]
        base = e["tables"].get("baseline")
        if base is not None:
            m = base["final_metric"]
            ax_metric.axhline(m["mean"], color="k", lw=1.2, label=f"exact baseline {m['mean']:.3f}")
            ax_metric.axhspan(m["min"], m["max"], color="k", alpha=0.1, lw=0)
        for kind, (color, marker) in KINDS.items():
            tables = sorted(((name, t) for name, t in e["tables"].items() if t["kind"] == kind),
                            key=lambda item: item[1]["bits"])
            if not tables:
                continue
            shift = 0.06 * (list(KINDS).index(kind) - 1.5)  # side by side at equal bits
            bits = np.array([t["bits"] for _, t in tables]) + shift
            f = [t["final_metric"] for _, t in tables]
            ax_metric.errorbar(bits, [s["mean"] for s in f], yerr=[[s["mean"] - s["min"] for s in f],
                                                                   [s["max"] - s["mean"] for s in f]],
                               color=color, marker=marker, capsize=3, lw=1, label=kind)
            ax_grad.plot(bits, [t["grad_rel_error"]["mean"] for _, t in tables], marker=marker, color=color,
                         label=f"{kind}: start")
            ax_grad.plot(bits, [t["grad_rel_error_end"]["mean"] for _, t in tables], marker=marker, ls="--",
                         color=color, mfc="none", label=f"{kind}: end")
            for x, (name, t) in zip(bits, tables, strict=True):
                if name == PAPER_TABLE:
                    for ax, y in ((ax_metric, t["final_metric"]["mean"]), (ax_grad, t["grad_rel_error"]["mean"])):
                        ax.plot(x, y, "o", ms=16, mfc="none", mec="gold", mew=2.5, zorder=5)
                        ax.annotate("the paper's table", (x, y), xytext=(12, 10), textcoords="offset points",
                                    fontsize=7.5, color="darkgoldenrod")
        better = "higher" if e["higher_is_better"] else "lower"
        c = e["config"]
        ax_metric.set(xlabel="bits", ylabel=f"final {e['metric']} ({better} is better)",
                      title=f"{e['experiment']} ({c['tuning']}, {c['target']}): final {e['metric']}\nmean, "
                            f"min-max over seeds (n = {len(next(iter(e['tables'].values()))['seeds'])})")
        ax_metric.legend(fontsize=7)
        ax_grad.set(yscale="log", xlabel="bits", ylabel="relative error of all weight gradients",
                    title=f"{e['experiment']}: weight-gradient error vs the exact backward (probe batch)\n"
                          "at the start (solid) and the end (dashed) of training, mean over seeds")
        ax_grad.legend(fontsize=7, ncol=2)
        for ax in (ax_metric, ax_grad):
            ax.set(xticks=range(1, 5), xlim=(0.6, 4.4))
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3, which="both")
    width = fig.get_figwidth()
    text = textwrap.fill("Study's answer: " + answer, int(width * 19))  # about 19 characters of 7 pt per inch
    fig.text(0.01, 0.005, text, fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.02 + 0.14 * (text.count("\n") + 1) / fig.get_figheight(), 1, 1))
    return fig


def make(quick: bool) -> Drawing:
    doc = studies.ablation_document(quick)
    experiments = [experiment_summary(doc, name) for name in doc["experiments"]]
    data = {"how": studies.how(__doc__, quick), "source": doc["command"],
            "paper_table": PAPER_TABLE, "answer": doc["answer"], "comparisons": doc.get("comparisons", []),
            "experiments": experiments}
    return Drawing(draw(experiments, doc["answer"]), data)
