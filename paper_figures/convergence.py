"""Figure 5: training convergence on real data (``approxbp.evidence.convergence``), the baseline against MS-BP,
Approx-BP and both, same seeds and batches: ViT on digits (full and LoRA), LLaMA on pydoc bytes, all-MiniLM-L6-v2 on
stdlib docstrings (full and LoRA).

One row per experiment and tuning.  Left: the training loss, each run smoothed by a trailing moving average over
5% of the steps (``SMOOTHING``), then the mean over seeds (line) and the min-max over seeds (band).  Middle: the
validation loss at the validation steps, mean and min-max band over seeds.  MS-BP and Approx-BP + MS-BP are dashed,
so that a curve equal to the one below it stays visible.  Right: the final validation metric of
every seed (dots), the mean (tick) and the min-max (error bar); the legend gives mean +- standard deviation.
"""

from __future__ import annotations

import numpy as np

from paper_figures import studies
from paper_figures.base import Drawing

NAME = "convergence"
TITLE = "Training convergence on real data: baseline vs MS-BP vs Approx-BP vs both, mean and min-max over seeds"
EXPERIMENT_LABELS = {"vit": "ViT on digits", "llama": "LLaMA on pydoc bytes",
                     "minilm": "all-MiniLM-L6-v2 on docstrings"}
INPUTS = tuple(studies.CONVERGENCE.values())
VARIANTS = {"baseline": ("baseline", "k", "-"), "ms": ("MS-BP", "C0", "--"), "approx": ("Approx-BP", "C1", "-"),
            "approx+ms": ("Approx-BP + MS-BP", "C3", "--")}  # dashed over solid: curves that coincide stay visible
SMOOTHING = 0.05  # moving-average window as a fraction of the steps


def smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average: y_t = mean(x_{max(0, t-w+1)..t})."""
    x = np.asarray(values, dtype=float)
    sums = np.cumsum(np.concatenate([[0.0], x]))
    t = np.arange(1, len(x) + 1)
    start = np.maximum(t - window, 0)
    return (sums[t] - sums[start]) / (t - start)


def band(curves: list[np.ndarray]) -> dict:
    """Mean, min and max over the seeds' curves, step by step (6 significant digits)."""
    stacked = np.vstack(curves)
    return {key: [float(f"{x:.6g}") for x in getattr(stacked, key)(0)] for key in ("mean", "min", "max")}


def summarize(doc: dict) -> list[dict]:
    """Per tuning and variant: the smoothed training-loss band, the validation-loss band and the final metrics."""
    metric, panels = doc["metric"], []
    unknown = {r["variant"] for r in doc["runs"]} - set(VARIANTS)
    if unknown:
        raise ValueError(f"{doc['experiment']}: unknown variants {sorted(unknown)} (known: {', '.join(VARIANTS)})")
    for tuning in dict.fromkeys(r["tuning"] for r in doc["runs"]):
        runs = [r for r in doc["runs"] if r["tuning"] == tuning]
        steps = len(runs[0]["train_loss"])
        window = max(1, round(SMOOTHING * steps))
        variants = {}
        for variant in (v for v in VARIANTS if any(r["variant"] == v for r in runs)):
            mine = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
            finals = [r["final"][metric] for r in mine]
            variants[variant] = {
                "seeds": [r["seed"] for r in mine], "train_loss_smoothed": band([smooth(r["train_loss"], window)
                                                                                 for r in mine]),
                "val_steps": mine[0]["val_steps"], "val_loss": band([np.asarray(r["val_loss"]) for r in mine]),
                "final": finals, "final_mean": float(np.mean(finals)),
                "final_std": float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
                "saved_bytes": mine[0]["saved_bytes"]}
        panels.append({"experiment": doc["experiment"], "tuning": tuning, "metric": metric, "steps": steps,
                       "smoothing_window": window, "variants": variants,
                       "checks": doc.get("checks", {}).get(tuning, {})})
    return panels


def draw(panels: list[dict]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 3, figsize=(15, 3.3 * len(panels)), squeeze=False,
                             gridspec_kw={"width_ratios": (1.25, 1.0, 0.75)})
    for (ax_train, ax_val, ax_final), p in zip(axes, panels, strict=True):
        name = f"{EXPERIMENT_LABELS[p['experiment']]}, {p['tuning']}"
        for k, (variant, v) in enumerate(p["variants"].items()):
            label, color, style = VARIANTS[variant]
            steps = np.arange(1, p["steps"] + 1)
            t = v["train_loss_smoothed"]
            ax_train.plot(steps, t["mean"], color=color, ls=style, lw=1.3, label=label)
            ax_train.fill_between(steps, t["min"], t["max"], color=color, alpha=0.15, lw=0)
            s = v["val_loss"]
            ax_val.plot(v["val_steps"], s["mean"], color=color, ls=style, marker="o", ms=3, lw=1.3)
            ax_val.fill_between(v["val_steps"], s["min"], s["max"], color=color, alpha=0.15, lw=0)
            ax_final.errorbar(k, v["final_mean"], color=color, fmt="_", ms=18, mew=2, capsize=5,
                              yerr=[[v["final_mean"] - min(v["final"])], [max(v["final"]) - v["final_mean"]]],
                              label=f"{label}: {v['final_mean']:.3f} +- {v['final_std']:.3f}")
            ax_final.plot([k] * len(v["final"]), v["final"], "o", color=color, ms=4, alpha=0.6)
        ax_train.set(title=f"{name}: training loss (moving average over {p['smoothing_window']} steps)",
                     xlabel="step", ylabel="training loss")
        ax_val.set(title=f"{name}: validation loss", xlabel="step", ylabel="validation loss")
        finals = [x for v in p["variants"].values() for x in v["final"]]
        pad = 0.6 * (max(finals) - min(finals)) + 1e-3
        ax_final.set(title=f"final {p['metric']} (n = {len(v['final'])} seeds)", xticks=[], ylabel=p["metric"],
                     xlim=(-0.6, len(p["variants"]) - 0.4),
                     ylim=(min(finals) - pad, max(finals) + 2.5 * pad))
        ax_final.legend(fontsize=7, loc="upper center", title="mean +- std", title_fontsize=7)
        ax_train.legend(fontsize=7, loc="upper right")
        for ax in (ax_train, ax_val, ax_final):
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
    fig.suptitle("Convergence on real data: mean over seeds (line), min-max over seeds (band, error bars); "
                 "same seeds, same batches per variant", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    return fig


def make(quick: bool) -> Drawing:
    docs = studies.convergence_documents(quick)
    panels = [p for d in docs for p in summarize(d)]
    data = {"how": studies.how(__doc__, quick),
            "sources": [{"experiment": d["experiment"], "command": d["command"], "description": d["description"],
                         "config": d["config"]} for d in docs],
            "panels": panels}
    return Drawing(draw(panels), data)
