"""Figure 1b: the backward tables at 1..4 bits for the three objectives, for GELU and SiLU.  Per objective and
activation: h - h~ and h' with the step functions h~' of every bit width.

primitive: the paper's J = integral (h - h~)^2, h~ = sum of 2^bits - 1 ReLUs (shipped tables); derivative: the
standard-normal-weighted L2 distance of h' and the step (shipped tables); empirical: the mean squared error of h' on
samples, here samples of a standard normal (fitted when the figure is drawn).  For the step-fitting objectives h~ is
the step function's integral from 0 (h~(0) = h(0) = 0).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from approxbp.fit import MAX_BITS, fit
from approxbp.fit.empirical import DEFAULT_BINS
from approxbp.targets import get_target
from paper_figures.base import Drawing
from paper_figures.curves import ACTIVATIONS, SHIPPED_SOURCE, from_fit, shipped

NAME = "backward_tables"
TITLE = "Backward tables at 1..4 bits for the primitive, derivative and empirical objectives (GELU, SiLU)"
INPUTS = ()
BITS = tuple(range(1, MAX_BITS + 1))
SAMPLES = {False: 1_000_000, True: 50_000}  # standard-normal samples of the empirical fits, full and quick
BINS = {False: DEFAULT_BINS, True: 256}  # quantile bins (the fit is optimal over their borders)
SEED = 0
STEP_PRIMITIVE = "; h~(x) = integral from 0 to x of h~'"
OBJECTIVE_LABELS = {"primitive": "primitive objective (paper): J = int (h - h~)^2, h~ = sum of 2^bits - 1 ReLUs",
                    "derivative": "derivative objective: int phi (h' - h~')^2, phi = N(0, 1) density" + STEP_PRIMITIVE,
                    "empirical": "empirical objective, tables fitted to {n} samples of a standard normal: mean "
                                 "(h' - h~')^2 over the samples" + STEP_PRIMITIVE}


def tables(target: str, objective: str, samples: np.ndarray, bins: int) -> list:
    if objective == "empirical":
        return [from_fit(fit(target, b, "empirical", samples=samples, bins=bins), f"{b} bit") for b in BITS]
    return [shipped(target, b, objective, f"{b} bit") for b in BITS]


def make(quick: bool) -> Drawing:
    samples = np.random.default_rng(SEED).standard_normal(SAMPLES[quick])
    objectives = tuple(OBJECTIVE_LABELS)
    fig = plt.figure(figsize=(18, 3.9 * len(objectives)), layout="constrained")
    data = {"how": f"primitive and derivative: the shipped tables of {SHIPPED_SOURCE}; empirical: "
                   f"approxbp.fit.fit(target, bits, 'empirical', samples=...) on {samples.size} standard-normal "
                   f"samples (numpy default_rng({SEED})) in {BINS[quick]} quantile bins.  "
                   "objective_value is each table's own objective; "
                   "for step-fitting objectives h~ is the integral of the step from 0.",
            "samples": int(samples.size), "bins": BINS[quick], "tables": {}}
    for panel, objective in zip(fig.subfigures(len(objectives), 1), objectives, strict=True):
        panel.suptitle(OBJECTIVE_LABELS[objective].format(n=f"{samples.size:,}"), fontsize=11, fontweight="bold")
        row = panel.subplots(1, 2 * len(ACTIVATIONS))
        for k, act in enumerate(ACTIVATIONS):
            target, x = get_target(act.target), np.linspace(-act.span, act.span, 2001)
            gap_ax, step_ax = row[2 * k], row[2 * k + 1]
            step_ax.plot(x, target.df(x), color="k", linewidth=2.5, alpha=0.3, label=f"h' = {act.label}'")
            curves = tables(act.target, objective, samples, BINS[quick])
            for b, curve in zip(BITS, curves, strict=True):
                gap_ax.plot(x, target.f(x) - curve.primitive(x), color=f"C{b - 1}", label=curve.label)
                step_ax.step(x, curve.step(x), color=f"C{b - 1}", where="post",
                             label=f"{curve.label}: sup|h' - h~'| = {curve.sup_error(act.target):.3f}")
            gap_ax.set_title(f"{act.label}: h - h~", fontsize=10)
            step_ax.set_title(f"{act.label}: h' and h~'", fontsize=10)
            for ax in (gap_ax, step_ax):
                ax.axhline(0, color="grey", linewidth=0.5)
                ax.legend(fontsize=7, loc="upper left")
                ax.set_xlabel("x (pre-activation)", fontsize=8)
            data["tables"][f"{act.target}/{objective}"] = [{"bits": b, **c.describe(act.target)}
                                                           for b, c in zip(BITS, curves, strict=True)]
    return Drawing(fig, data)
