"""h vs h~ and h' vs the step function, with the errors shaded (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from approxbp.artifacts import save_figure
from approxbp.fit.result import FitResult
from approxbp.targets import get_target


def plot_fit(result: FitResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = get_target(result.target)
    t = np.asarray(result.thresholds)
    span = max(4.0, 1.25 * float(np.max(np.abs(t))))
    x = np.linspace(-span, span, 2001)
    step = result.step(x)
    panels = 2 if result.a is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    title = f"{result.target}, {result.bits} bits, {result.objective} objective"
    if result.a is not None:
        ax = axes[0, 0]
        approx = np.maximum(x[:, None] - np.asarray(result.c)[None, :], 0.0) @ np.asarray(result.a)
        h = target.f(x)
        ax.plot(x, h, label="h (exact)")
        ax.plot(x, approx, "--", label="h~ = sum a_i relu(x - c_i)")
        ax.fill_between(x, h, approx, color="C3", alpha=0.3, label=f"J = {result.objective_value:.6g}")
        ax.set_title(f"primitive: {title}")
        ax.legend()
    ax = axes[0, -1]
    d = target.df(x)
    ax.plot(x, d, label="h' (exact)")
    ax.step(x, step, where="post", label="h~' (backward table)")
    ax.fill_between(x, d, step, color="C3", alpha=0.3, label=f"sup error = {result.sup_error:.4f}")
    ax.vlines(t, *ax.get_ylim(), colors="grey", linestyles=":", linewidth=0.8)
    ax.set_title(f"derivative: {title}")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
