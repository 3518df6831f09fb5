"""Figure: activation memory kept per transformer block, by op kind, for baseline / Approx-BP / MS-BP / both, with
the analytic minimum marked -- one panel per ``python -m approxbp.memory --json`` document.

    python -m approxbp.memory --model vit-b --json > vit-b.json      # (one per model)
    python paper_figures/make_memory_figure.py vit-b.json llama-7b.json [--out paper_figures/figures/memory.png]
    python paper_figures/make_memory_figure.py --presets vit-b llama-7b roberta-base   # measures them first
"""

from __future__ import annotations

import argparse
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

from approxbp.fit.plot import save_figure

VARIANT_LABELS = {"baseline": "baseline", "approx": "Approx-BP", "ms": "MS-BP", "both": "both"}


def measure_preset(name: str) -> dict:
    """The --json document of a preset at its paper setting (fake tensors: seconds, nothing allocated)."""
    from approxbp.memory.cli import main

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        if main(["--model", name, "--json"]) not in (0, None):
            raise RuntimeError(f"python -m approxbp.memory --model {name} failed")
    return json.loads(buffer.getvalue())


def draw(documents: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_kinds = list(dict.fromkeys(k for doc in documents for k in doc["kinds"]))
    colors = {kind: f"C{i}" for i, kind in enumerate(all_kinds)}  # one colour per kind in every panel
    fig, axes = plt.subplots(1, len(documents), figsize=(4.2 * len(documents), 4.6), squeeze=False)
    shown = {}
    for ax, doc in zip(axes[0], documents, strict=True):
        variants = [v for v in VARIANT_LABELS if v in doc["variants"]]
        kinds = [k for k in doc["kinds"] if any(doc["variants"][v]["block"]["d_per_token"].get(k) for v in variants)]
        bottom = [0.0] * len(variants)
        for kind in kinds:
            heights = [doc["variants"][v]["block"]["d_per_token"].get(kind, 0.0) for v in variants]
            shown[kind] = ax.bar([VARIANT_LABELS[v] for v in variants], heights, bottom=bottom, color=colors[kind])
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        for x, v in enumerate(variants):
            analytic = doc["variants"][v].get("analytic")
            if analytic:
                ax.hlines(analytic["total_d_per_token"], x - 0.4, x + 0.4, colors="k", linestyles="--", linewidth=1)
            pct = doc["variants"][v]["reduction_pct"]["block"] if v != "baseline" else None
            ax.annotate(f"{bottom[x]:.2f}" + (f"\n({pct:+.1f}%)" if pct is not None else ""), (x, bottom[x]),
                        ha="center", va="bottom", fontsize=8)
        s = doc["setting"]
        ax.set_title(f"{doc['model']['name'] or doc['model']['class']}: {s['tuning']}, {s['batch']}x{s['seq']} "
                     f"{s['dtype']}", fontsize=9)
        ax.set_ylabel("kept per block per token (d elements)")
        ax.set_ylim(0, 1.2 * max(bottom))
    ordered = [k for k in all_kinds if k in shown]
    fig.legend([shown[k] for k in ordered], ordered, loc="lower center", ncol=len(ordered) + 1, fontsize=8,
               title="op kind (dashed line: analytic minimum)", title_fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    save_figure(fig, out, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("documents", nargs="*", type=Path, help="--json outputs of python -m approxbp.memory")
    parser.add_argument("--presets", nargs="*", default=[], help="preset names to measure first")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "figures" / "memory.png")
    args = parser.parse_args(argv)
    documents = [json.loads(p.read_text()) for p in args.documents] + [measure_preset(n) for n in args.presets]
    if not documents:
        parser.error("give --json documents or --presets")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(documents, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
