"""Figure 6b: every parameter's Approx-BP gradient error through L blocks against the chain bound of proof (v)
(``approxbp.evidence.chain``), per model.

Top row: for each parameter (attention, MLP, norms, embeddings) of a small ViT and a small LLaMA (float64), its
measured relative error ||dp~ - dp||_F / ||dp||_F against its bound ||K~_p||_2 E_k + ||(K~_p - K_p) g_k||_F (divided
by the same ||dp||_F), coloured by the stage it belongs to (0: embeddings; the last block's bound is exact), for the
2-bit primitive (the paper's) and derivative tables; points below the diagonal: the bound holds.  Bottom row: the
gradient error ||e_k||_F at each stage's output, measured (solid) and its bound E_k from the recursion (dashed), for
every table at 2 bits.
"""

from __future__ import annotations

from paper_figures import studies
from paper_figures.base import Drawing

NAME = "grad_chain"
TITLE = "Every parameter's Approx-BP gradient error through L blocks against the chain bound (v)"
INPUTS = (studies.GRAD_CHAIN,)
BITS = 2
KINDS = {"primitive": "C0", "derivative": "C1", "empirical": "C2", "relu": "C3"}
MARKERS = {"primitive": "o", "derivative": "^"}


def model_summary(doc: dict, model: str) -> dict:
    rows = [r for r in doc["rows"] if r["model"] == model and r["bits"] == BITS and r["kind"] in MARKERS]
    stages = [s for s in doc["stages"] if s["model"] == model and s["table"].endswith(f"-{BITS}")]
    tables = list(dict.fromkeys(s["table"] for s in stages))
    return {"model": model, "description": doc["models"][model],
            "params": [{k: r[k] for k in ("table", "kind", "stage", "param", "measured", "bound")} for r in rows],
            "stage_errors": {t: {"stage": [s["stage"] for s in stages if s["table"] == t],
                                 "measured_e": [s["measured_e"] for s in stages if s["table"] == t],
                                 "bound_e": [s["bound_e"] for s in stages if s["table"] == t]} for t in tables},
            "max_ratio": max(r["measured"] / r["bound"] for r in doc["rows"] if r["model"] == model and r["bound"])}


def draw(models: list[dict]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(models), figsize=(5.6 * len(models), 10), squeeze=False)
    for col, m in enumerate(models):
        ax_p, ax_e = axes[:, col]
        last = max(p["stage"] for p in m["params"])
        cmap = plt.get_cmap("viridis", last + 1)
        for p in m["params"]:
            ax_p.scatter(p["bound"], p["measured"], s=12, marker=MARKERS[p["kind"]], color=cmap(p["stage"]),
                         alpha=0.8)
        low = min(min(p["measured"] for p in m["params"] if p["measured"] > 0), 1e-3)
        high = max(p["bound"] for p in m["params"])
        ax_p.plot([low, high], [low, high], "k-", lw=0.8)
        for kind, marker in MARKERS.items():
            ax_p.scatter([], [], marker=marker, color="grey", label=f"{kind}-{BITS}")
        for stage in range(last + 1):
            ax_p.scatter([], [], marker="s", color=cmap(stage), label="embeddings" if stage == 0 else f"block {stage}")
        ax_p.set(xscale="log", yscale="log", xlabel="chain bound / ||dp||", ylabel="measured ||dp~ - dp|| / ||dp||",
                 title=f"{m['model']}: every parameter, {BITS} bits\n(largest measured / bound over every table: "
                       f"{m['max_ratio']:.3g})")
        ax_p.legend(fontsize=6.5, ncol=2, loc="upper left")
        for table, e in m["stage_errors"].items():
            color = KINDS[table.split("-")[0]]
            ax_e.plot(e["stage"], e["measured_e"], "o-", color=color, label=f"{table}: measured")
            ax_e.plot(e["stage"], e["bound_e"], "s--", color=color, label=f"{table}: bound E_k")
        ax_e.set(yscale="symlog", xlabel="stage (0: embeddings)", ylabel="||e_k||_F at the stage's output",
                 title=f"{m['model']}: gradient error entering each stage, {BITS} bits")
        ax_e.set_yscale("symlog", linthresh=1e-3)
        ax_e.xaxis.get_major_locator().set_params(integer=True)
        ax_e.legend(fontsize=6.5, ncol=2)
        for ax in (ax_p, ax_e):
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def make(quick: bool) -> Drawing:
    doc = studies.grad_chain_document(quick)
    models = [model_summary(doc, m) for m in doc["models"]]
    return Drawing(draw(models), {"how": studies.how(__doc__, quick), "source": doc["command"], "bits": BITS,
                                  "models": models})
