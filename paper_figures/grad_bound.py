"""Figure 6: Approx-BP's gradient error through real networks against the proven bounds
(``approxbp.evidence.grad_error``, bounds in ``approxbp.evidence.bounds``), per model.

Relative errors ||G~ - G||_F / ||G||_F against the exact gradients G; the bounds are divided by the same ||G||_F.
Top row: the fc1 (gate_proj) weight gradient per layer with only that layer's activation approximated (single-layer),
measured (solid) against bound (ii) a priori (dotted) and a posteriori (dashed), for the 2-bit tables.  Middle row:
measured / bound per layer for every bound kind ((ii) a priori, (ii) a posteriori, (iii) the gradient at the MLP's
input, (iv) every activation approximated, with the measured upstream error); below 1 means the bound holds.  Bottom
row: is the Approx-BP gradient closer to the exact gradient of the network with h (GELU/SiLU, solid) or with h~ (the
table's piecewise-linear primitive in the forward too, dashed)?  Relative distances against the table's bits, per
table kind; the paper's objective J = integral (h - h~)^2 is written beside the tables where it is defined.
"""

from __future__ import annotations

from paper_figures import studies
from paper_figures.base import Drawing

NAME = "grad_bound"
TITLE = "Gradient error of Approx-BP per layer against the proven bounds, and distance to the h- and h~-networks"
INPUTS = (studies.GRAD_ERROR,)
BITS = 2
KINDS = {"primitive": "C0", "derivative": "C1", "empirical": "C2", "relu": "C3"}  # table kind: colour
BOUND_KINDS = {"(ii) a-priori": "v", "(ii) a-posteriori": "^", "(iii) input": "s", "(iv) upstream": "o"}


def model_summary(doc: dict, model: str) -> dict:
    """What the figure plots for one model."""
    rows = [r for r in doc["rows"] if r["model"] == model and r["bound_kind"] != "none"]
    unknown = {r["bound_kind"] for r in rows} - set(BOUND_KINDS)
    if unknown:
        raise ValueError(f"{model}: unknown bound kinds {sorted(unknown)} (known: {', '.join(BOUND_KINDS)})")
    tables = list(dict.fromkeys(r["table"] for r in rows if r["bits"] == BITS))
    per_table = {}
    for table in tables:
        mine = sorted((r for r in rows if r["table"] == table), key=lambda r: r["layer"])
        weight = {r["layer"]: r["measured"] for r in mine if r["bound_kind"] == "(ii) a-priori"}
        per_table[table] = {
            "kind": mine[0]["kind"], "layers": sorted(weight),
            "measured_fc1_weight": [weight[k] for k in sorted(weight)],
            "bounds": {b: [r["bound"] for r in mine if r["bound_kind"] == b] for b in ("(ii) a-priori",
                                                                                       "(ii) a-posteriori")},
            "ratios": {b: {"layers": [r["layer"] for r in mine if r["bound_kind"] == b],
                           "ratio": [r["ratio"] for r in mine if r["bound_kind"] == b]} for b in BOUND_KINDS},
        }
    h = [e for e in doc["h_vs_htilde"] if e["model"] == model]
    return {"model": model, "description": doc["models"][model]["description"], "tables": per_table,
            "max_ratio": max((r["ratio"] for r in rows), default=None),
            "h_vs_htilde": [{k: e[k] for k in ("table", "kind", "bits", "J", "sup_gap", "rel_to_h_network",
                                               "rel_to_htilde_network")} for e in h]}


def draw(models: list[dict]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(models), figsize=(5.2 * len(models), 12.5), squeeze=False)
    for col, m in enumerate(models):
        ax_err, ax_ratio, ax_h = axes[:, col]
        for table, t in m["tables"].items():
            color = KINDS[t["kind"]]
            ax_err.plot(t["layers"], t["measured_fc1_weight"], "o-", color=color, label=table)
            ax_err.plot(t["layers"], t["bounds"]["(ii) a-priori"], ":", color=color)
            ax_err.plot(t["layers"], t["bounds"]["(ii) a-posteriori"], "--", color=color)
            for b, marker in BOUND_KINDS.items():
                r = t["ratios"][b]
                ax_ratio.plot(r["layers"], r["ratio"], marker=marker, ls="-", lw=0.8, color=color, ms=5)
        ax_err.set(yscale="log", xlabel="layer", ylabel="relative error of the fc1 weight gradient",
                   title=f"{m['model']}: one layer approximated, {BITS} bits")
        for style, label in (("o-", "measured"), (":", "bound (ii) a priori"), ("--", "bound (ii) a posteriori")):
            ax_err.plot([], [], style, color="grey", label=label)
        ax_err.set_ylim(top=ax_err.get_ylim()[1] * 20)
        ax_err.legend(fontsize=6.5, ncol=2, loc="upper right")
        ax_ratio.axhline(1.0, color="k", lw=0.8)
        ax_ratio.set(yscale="log", xlabel="layer", ylabel="measured / bound",
                     title=f"{m['model']}: measured / bound, {BITS} bits\n(largest over every table and bits: "
                           f"{m['max_ratio']:.3g}; < 1: the bound holds)")
        for b, marker in BOUND_KINDS.items():
            ax_ratio.plot([], [], marker=marker, ls="", color="grey", label=b)
        for table, t in m["tables"].items():
            ax_ratio.plot([], [], ls="-", color=KINDS[t["kind"]], label=table)
        ax_ratio.legend(fontsize=6.5, ncol=2, loc="upper left")
        ax_ratio.set_ylim(top=10.0)
        for ax in (ax_err, ax_ratio):
            ax.xaxis.get_major_locator().set_params(integer=True)
        for kind, color in KINDS.items():
            entries = sorted((e for e in m["h_vs_htilde"] if e["kind"] == kind), key=lambda e: e["bits"])
            if not entries:
                continue
            bits = [e["bits"] for e in entries]
            ax_h.plot(bits, [e["rel_to_h_network"] for e in entries], "o-", color=color, label=f"{kind}: to h")
            ax_h.plot(bits, [e["rel_to_htilde_network"] for e in entries], "s--", color=color, label=f"{kind}: to h~")
            for e in entries:
                if e["J"] is not None:
                    ax_h.annotate(f"J={e['J']:.1e}", (e["bits"], e["rel_to_htilde_network"]), fontsize=6.5,
                                  xytext=(4, -8), textcoords="offset points", color=color)
        ax_h.set(yscale="log", xlabel="bits", xticks=range(1, 5), ylabel="relative distance of the Approx-BP gradient",
                 title=f"{m['model']}: Approx-BP gradient vs exact gradient\nof the h-network and of the h~-network")
        ax_h.legend(fontsize=6.5, ncol=2)
        for ax in (ax_err, ax_ratio, ax_h):
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def make(quick: bool) -> Drawing:
    doc = studies.grad_error_document(quick)
    models = [model_summary(doc, m) for m in doc["models"]]
    data = {"how": studies.how(__doc__, quick), "source": doc["command"], "bits": BITS,
            "models": models}
    return Drawing(draw(models), data)
