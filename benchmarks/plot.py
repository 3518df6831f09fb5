"""Plots of a results document of ``python -m benchmarks.run``: kernels (achieved bandwidth against size, per op,
approxbp vs PyTorch vs Liger-Kernel) and training (memory and throughput relative to the baseline)."""

from __future__ import annotations

import matplotlib.pyplot as plt

IMPL_STYLE = {"approxbp": "-", "torch": "--", "liger": ":"}
DIRECTION_COLOR = {"forward": "C0", "backward": "C3"}
GB = 1e9


def draw(doc: dict, title: str | None = None):
    """One figure with a part per suite in ``doc``; ``title`` defaults to the document's label."""
    parts = [name for name in ("kernels", "training") if doc.get(name)]
    if not parts:
        raise ValueError("the results document holds neither a kernels nor a training suite")
    heights = {"kernels": 8.0, "training": 5.2}
    fig = plt.figure(figsize=(16, sum(heights[p] for p in parts)))
    subfigs = fig.subfigures(len(parts), 1, height_ratios=[heights[p] for p in parts]) if len(parts) > 1 else [fig]
    for part, sub in zip(parts, subfigs, strict=True):
        (kernels_panels if part == "kernels" else training_panels)(sub, doc[part], title or doc["label"])
    return fig


def pick_dtype(kernels: dict) -> str:
    return "bf16" if "bf16" in kernels["dtypes"] else kernels["dtypes"][0]


def kernels_panels(fig, kernels: dict, title: str) -> None:
    dtype = pick_dtype(kernels)
    ops = list(dict.fromkeys(r["op"] for r in kernels["results"]))
    axes = fig.subplots(2, 4).ravel()
    for ax, op in zip(axes, ops, strict=False):
        for impl, style in IMPL_STYLE.items():
            rows = sorted((r for r in kernels["results"] if r["op"] == op and r["impl"] == impl and
                           r["dtype"] == dtype), key=lambda r: r["size_bytes"])
            if not rows:
                continue
            sizes = [r["size_bytes"] / 2**20 for r in rows]
            for direction, color in DIRECTION_COLOR.items():
                bw = [r[direction]["bandwidth_bytes_per_s"] / GB for r in rows]
                low = [b - r[direction]["bytes_moved"] / r[direction]["timing"]["q3_s"] / GB for b, r in zip(bw, rows,
                                                                                                         strict=True)]
                high = [r[direction]["bytes_moved"] / r[direction]["timing"]["q1_s"] / GB - b for b, r in zip(bw, rows,
                                                                                                          strict=True)]
                ax.errorbar(sizes, bw, yerr=[low, high], ls=style, color=color, marker=".", capsize=2,
                            label=f"{impl} {direction}")
        ax.set(xscale="log", title=f"{op} ({dtype})", xlabel="input size (MiB)", ylabel="GB/s (median, IQR bars)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6)
    ax = axes[len(ops)]
    copies = kernels["copy"]
    ax.plot([c["size_bytes"] / 2**20 for c in copies], [c["bandwidth_bytes_per_s"] / GB for c in copies], "k.-")
    ax.set(xscale="log", title="copy bandwidth (dst.copy_(src), 2 x bytes)", xlabel="size (MiB)", ylabel="GB/s")
    ax.title.set_fontsize(9)
    for extra in axes[len(ops) + 1:]:
        extra.set_visible(False)
    fig.suptitle(f"{title}\nkernels: achieved bandwidth = bytes at the op's boundary / median time; approxbp "
                 f"backend: {kernels['approxbp_backend']}", fontsize=10)
    fig.subplots_adjust(top=0.88, hspace=0.4, wspace=0.3)


def training_panels(fig, training: dict, title: str) -> None:
    settings = training["settings"]
    ax_mem, ax_speed = fig.subplots(1, 2)
    variants = list(settings[0]["variants"])
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(settings))]
        rows = [s["variants"][variant] for s in settings]
        mem = [r.get("memory_vs_baseline") or 0.0 for r in rows]
        ax_mem.bar(xs, mem, width, color=f"C{i}", label=variant)
        predicted = [_predicted_ratio(s, variant) for s in settings]
        ax_mem.plot([x for x, p in zip(xs, predicted, strict=True) if p is not None],
                    [p for p in predicted if p is not None], "k_", ms=10, mew=2,
                    label="profiler's prediction" if i == 0 else None)
        speed = [r.get("throughput_vs_baseline") or 0.0 for r in rows]
        ax_speed.bar(xs, speed, width, color=f"C{i}", label=variant)
        for ax in (ax_mem, ax_speed):
            for x, r in zip(xs, rows, strict=True):
                if "failed" in r:
                    ax.annotate("failed", (x, 0.02), rotation=90, ha="center", va="bottom", fontsize=7, color="red")
    metric = next((r["memory"]["metric"] for s in settings for r in s["variants"].values() if "memory" in r), "")
    names = [f"{s['name']}\n{s['layers']} blocks, {s['batch']} x {s['seq']}" for s in settings]
    for ax in (ax_mem, ax_speed):
        ax.set_xticks(range(len(settings)), names, fontsize=7)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.legend(fontsize=6, ncol=2)
        ax.title.set_fontsize(9)
    ax_mem.set(ylabel="memory / baseline", title=f"memory ({metric});\nblack: the profiler's activation bytes / "
                                                 "its baseline's")
    ax_speed.set(ylabel="samples/s / baseline", title=f"throughput: median of {training['timed_steps']} steps after "
                                                       f"{training['warmup_steps']} warm-up ({training['step']})")
    fig.suptitle(f"{title}\ntraining", fontsize=10)
    fig.subplots_adjust(top=0.78, bottom=0.14)


def _predicted_ratio(setting: dict, variant: str) -> float | None:
    base = setting["variants"]["baseline"]["prediction"].get("activation_bytes")
    value = setting["variants"][variant]["prediction"].get("activation_bytes")
    return value / base if base and value is not None else None
