"""Figure 1a: ReGELU2 and ReSiLU2 as in the paper.  Per activation: h and h~ = sum a_i relu(x - c_i) (3 ReLUs), their
difference, and h' with the 2-bit step function h~' that Approx-BP backpropagates through; for the official
LowMemoryBP constants and approxbp's optimum of the same objective J = integral (h - h~)^2 dx.  Cheap at any scale:
the quick run draws the same figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from approxbp.fit import official
from approxbp.targets import get_target
from paper_figures.base import Drawing
from paper_figures.curves import ACTIVATIONS, SHIPPED_SOURCE, from_fit, shipped

NAME = "regelu2_resilu2"
TITLE = "ReGELU2 and ReSiLU2: h and h~, h - h~, h' and the 2-bit step function (official constants and ours)"
INPUTS = ()
STYLES = ("-", "--")


def make(quick: bool) -> Drawing:
    fig, axes = plt.subplots(len(ACTIVATIONS), 3, figsize=(15, 4.2 * len(ACTIVATIONS)))
    data = {"how": "official: the LowMemoryBP constants (approxbp.fit.official_constants); ours: the shipped 2-bit "
                   f"primitive table from {SHIPPED_SOURCE}; J = integral over R of (h - h~)^2 (ours: reduced-problem "
                   "quadrature; official: approxbp.fit.primitive.objective); E = integral phi (h' - h~')^2 "
                   "(phi standard normal).  Curves are closed forms of these numbers on a 2001-point grid.",
            "tables": {}}
    for row, act in zip(axes, ACTIVATIONS, strict=True):
        target, x = get_target(act.target), np.linspace(-act.span, act.span, 2001)
        curves = (from_fit(official(act.target), f"official {act.approx_label} (LowMemoryBP)"),
                  shipped(act.target, 2, "primitive", f"ours (optimum of J), {act.approx_label}"))
        row[0].plot(x, target.f(x), color="k", linewidth=2.5, alpha=0.35, label=f"h = {act.label}")
        row[2].plot(x, target.df(x), color="k", linewidth=2.5, alpha=0.35, label=f"h' = {act.label}'")
        for curve, style in zip(curves, STYLES, strict=True):
            h_tilde = curve.primitive(x)
            row[0].plot(x, h_tilde, style, label=f"h~: {curve.label}")
            row[1].plot(x, target.f(x) - h_tilde, style, label=f"{curve.label}: J = {curve.objective_value:.7f}")
            row[2].step(x, curve.step(x), style, where="post",
                        label=f"h~': {curve.label}\nE = {curve.normal_weighted_error(act.target):.5f}, "
                              f"sup|h' - h~'| = {curve.sup_error(act.target):.4f}")
        row[0].set_title(f"{act.label} and {act.approx_label}: h and h~ = sum of 3 shifted ReLUs")
        row[1].set_title(f"{act.approx_label}: h - h~ (J = integral of its square)")
        row[2].set_title(f"{act.approx_label}: h' and the 2-bit backward h~' (4 levels)")
        for ax, loc, ylabel in zip(row, ("upper left", "upper right", "upper left"),
                                   ("h(x), h~(x)", "h(x) - h~(x)", "h'(x), h~'(x)"), strict=True):
            ax.axhline(0, color="grey", linewidth=0.5)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("x (pre-activation)")
            ax.legend(fontsize=7.5, loc=loc)
        data["tables"][act.target] = [c.describe(act.target) for c in curves]
    fig.tight_layout()
    return Drawing(fig, data)
