"""Figure 3: activation memory kept per transformer block at the paper's settings (ViT-B, LLaMA-7B, RoBERTa-base),
by op kind, for the baseline, Approx-BP, MS-BP and both, with the analytic minimum of each variant dashed.

Measured by ``approxbp.memory`` (saved-tensor hooks, unique storages, parameters excluded) under fake tensors, so
paper-scale shapes allocate nothing; the same numbers as ``python -m approxbp.memory --model NAME --json``.  The
quick scale keeps the shapes and builds 3 blocks instead of all (the middle block is measured either way).
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from paper_figures.base import Drawing

NAME = "block_memory"
TITLE = "Activation memory per block by op kind at the paper's settings: baseline, Approx-BP, MS-BP, both"
INPUTS = ()
PRESETS = {"vit-b": "ViT-B/16", "llama-7b": "LLaMA-7B", "roberta-base": "RoBERTa-base"}  # preset: display name
QUICK_LAYERS = 3
VARIANT_LABELS = {"baseline": "baseline", "approx": "Approx-BP", "ms": "MS-BP", "both": "both"}


def measure_preset(name: str, layers: int | None) -> dict:
    """The ``python -m approxbp.memory --json`` document of a preset at its paper setting."""
    from approxbp.memory.measurement import Setting, measure
    from approxbp.memory.presets import PRESETS as SETTINGS
    from approxbp.memory.report import to_json

    p = SETTINGS[name]
    setting = Setting(p.config, p.batch, p.seq, p.dtype, p.tuning, p.lora, layers=layers)
    return to_json(name, setting, measure(setting))


def summary(doc: dict) -> dict:
    """What the figure plots from one profiler document."""
    variants = {}
    for v in VARIANT_LABELS:
        if v in doc["variants"]:
            entry = doc["variants"][v]
            variants[v] = {"d_per_token": entry["block"]["d_per_token"],
                           "total_d_per_token": entry["block"]["total_d_per_token"],
                           "reduction_pct": entry["reduction_pct"]["block"],
                           "analytic_total_d_per_token": (entry["analytic"] or {}).get("total_d_per_token")}
    return {"model": doc["model"], "setting": doc["setting"], "block_index": doc["block_index"],
            "variants": variants, "unavailable": doc.get("unavailable", {})}


def draw(summaries: list[dict]):
    from approxbp.memory.kinds import KIND_LABELS

    all_kinds = list(dict.fromkeys(k for s in summaries for v in s["variants"].values() for k in v["d_per_token"]))
    colors = {kind: f"C{i}" for i, kind in enumerate(all_kinds)}  # one colour per kind in every panel
    fig, axes = plt.subplots(1, len(summaries), figsize=(4.4 * len(summaries), 5.0), squeeze=False)
    shown = {}
    for ax, s in zip(axes[0], summaries, strict=True):
        variants = list(s["variants"])
        kinds = [k for k in all_kinds if any(s["variants"][v]["d_per_token"].get(k) for v in variants)]
        bottom = [0.0] * len(variants)
        for kind in kinds:
            heights = [s["variants"][v]["d_per_token"].get(kind, 0.0) for v in variants]
            shown[kind] = ax.bar([VARIANT_LABELS[v] for v in variants], heights, bottom=bottom, color=colors[kind])
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        for x, v in enumerate(variants):
            analytic = s["variants"][v]["analytic_total_d_per_token"]
            if analytic is not None:
                shown["analytic minimum"] = ax.hlines(analytic, x - 0.4, x + 0.4, colors="k", linestyles="--")
            pct = s["variants"][v]["reduction_pct"] if v != "baseline" else None
            ax.annotate(f"{bottom[x]:.2f}" + (f"\n({pct:+.1f}%)" if pct is not None else ""), (x, bottom[x]),
                        ha="center", va="bottom", fontsize=8)
        m, st = s["model"], s["setting"]
        lora = f" r{st['lora']['rank']}, dropout {st['lora']['dropout']:g}" if st["lora"] else ""
        ax.set_title(f"{PRESETS.get(m['name'], m['name'])} ({m['blocks']} blocks, d = {m['hidden']})\n"
                     f"{st['tuning']}{lora}, batch "
                     f"{st['batch']} x {st['seq']} tokens, {st['dtype']}", fontsize=9)
        ax.set_ylabel("kept per block per token (units of d elements)")
        ax.set_ylim(0, 1.22 * max(bottom))
    ordered = [k for k in [*all_kinds, "analytic minimum"] if k in shown]
    fig.legend([shown[k] for k in ordered], [KIND_LABELS.get(k, k) for k in ordered], loc="lower center",
               ncol=len(ordered), fontsize=8,
               title="op kind of the saved tensors (dashed: the variant's analytic minimum)", title_fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def make(quick: bool) -> Drawing:
    from tqdm import tqdm

    layers = QUICK_LAYERS if quick else None
    summaries = [summary(measure_preset(name, layers)) for name in tqdm(PRESETS, desc="profiling", leave=False)]
    data = {"how": "approxbp.memory.measure at each preset's paper setting (approxbp.memory.presets), fake tensors, "
                   "GPU kernels counted (flash attention, bool dropout masks); the middle block's saved bytes per "
                   "token in units of d = hidden size x element bytes"
                   + (f"; quick scale: {QUICK_LAYERS} blocks built" if quick else "")
                   + ".  Same numbers: python -m approxbp.memory --model NAME --json",
            "models": summaries}
    return Drawing(draw(summaries), data)
