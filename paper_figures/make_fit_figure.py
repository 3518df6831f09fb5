"""Figure: the 2-bit backward of ReGELU2 and ReSiLU2 (the paper's Figure of h~ and h~'), with the official LowMemoryBP
constants, approxbp's certified optimum of the same objective, and the derivative-objective table.

    python paper_figures/make_fit_figure.py [--out paper_figures/figures/fit_2bit.png]

Left column: h - h~ for the two primitive fits (J in the legend).  Right column: h' and the three step functions,
with the normal-weighted L2 error E of each (the derivative table minimises E; the paper's objective does not).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.integrate import quad
from scipy.stats import norm

from approxbp.fit import fit, official
from approxbp.fit.plot import save_figure
from approxbp.targets import get_target

TARGETS = {"gelu": ("ReGELU2", 5.0), "silu": ("ReSiLU2", 9.0)}


def normal_weighted_error(result) -> float:
    """E = integral phi(x) (h'(x) - step(x))^2 dx of a table with its own levels (adaptive quadrature per interval)."""
    df, edges = get_target(result.target).df, [-np.inf, *result.thresholds, np.inf]
    return sum(quad(lambda u, lv=lv: norm.pdf(u) * (float(df(np.array(u))) - lv) ** 2, lo, hi, epsabs=1e-13)[0]
               for lv, lo, hi in zip(result.levels, edges[:-1], edges[1:], strict=True))


def draw(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(TARGETS), 2, figsize=(11, 4 * len(TARGETS)))
    for row, (name, (label, span)) in zip(axes, TARGETS.items(), strict=True):
        target, x = get_target(name), np.linspace(-span, span, 4001)
        tables = {"official (LowMemoryBP)": official(name), "approxbp, primitive": fit(name, 2, "primitive"),
                  "approxbp, derivative": fit(name, 2, "derivative")}
        for (tag, r), style in zip(tables.items(), ("-", "--", ":"), strict=True):
            if r.a is not None:
                approx = np.maximum(x[:, None] - np.asarray(r.c), 0.0) @ np.asarray(r.a)
                row[0].plot(x, target.f(x) - approx, style, label=f"{tag}: J = {r.objective_value:.7f}")
            row[1].step(x, r.step(x), style, where="post", label=f"{tag}: E = {normal_weighted_error(r):.5f}")
        row[1].plot(x, target.df(x), color="k", linewidth=0.8, label="h' (exact)")
        row[0].set_title(f"{label}: h - h~ (primitive objective)")
        row[1].set_title(f"{label}: h' and the 2-bit backward")
        for ax in row:
            ax.axhline(0, color="grey", linewidth=0.5)
            ax.legend(fontsize=8, loc="lower right" if ax is row[1] else "upper right")
    fig.tight_layout()
    save_figure(fig, out, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "figures" / "fit_2bit.png")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
