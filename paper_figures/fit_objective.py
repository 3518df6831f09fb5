"""Figure 2: the paper's objective around its optimum.  For 3 ReLUs and fixed knots c the best coefficients are a
linear solve, so the fit is a search over c of the reduced objective J*(c) = min_a J(a, c)
(``approxbp.fit.primitive.solve_knots``).  Per activation: J* along the symmetric family c = (-s, 0, s); across it
(the middle knot moved by d, or both outer knots shifted by d); and log10(J* - J_min) over the outer knots
(c_1, c_3) with c_2 at the optimum.  Marked: our optimum (the shipped table) and the official LowMemoryBP constants,
whose J (with their own a) is above J* at their knots."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from approxbp.fit import official
from approxbp.fit.primitive import solve_knots
from approxbp.targets import get_target
from paper_figures.base import Drawing
from paper_figures.curves import ACTIVATIONS, SHIPPED_SOURCE, shipped

NAME = "fit_objective"
TITLE = "The reduced objective J*(c) of ReGELU2/ReSiLU2 around its optimum, with the official constants marked"
INPUTS = ()
POINTS = {False: 241, True: 41}  # samples along each 1-d cut
GRID = {False: 81, True: 25}  # contour grid per axis
MIDDLE, OUTER = np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 1.0])  # knot moves across the symmetric family


def reduced(target, knots) -> float:
    return solve_knots(target, np.asarray(knots, dtype=np.float64)).value


def make(quick: bool) -> Drawing:
    n, m = POINTS[quick], GRID[quick]
    fig, axes = plt.subplots(len(ACTIVATIONS), 3, figsize=(16, 4.6 * len(ACTIVATIONS)))
    data = {"how": "J*(c) = min over a of integral (h - sum a_i relu(x - c_i))^2 dx with sum a = 1, sum a c = 0, by "
                   "approxbp.fit.primitive.solve_knots (composite Gauss-Legendre, exact tails); ours: the shipped "
                   f"table from {SHIPPED_SOURCE}; official: approxbp.fit.official_constants.",
            "targets": {}}
    for row, act in zip(axes, ACTIVATIONS, strict=True):
        target = get_target(act.target)
        ours, theirs = shipped(act.target, 2, "primitive", "ours"), official(act.target)
        c_opt, c_off = np.asarray(ours.c), np.asarray(theirs.c)
        j_min, s_opt = reduced(target, c_opt), (c_opt[2] - c_opt[0]) / 2
        j_star_official = reduced(target, c_off)
        off_outer = max(abs(c_off[0] - c_opt[0]), abs(c_off[2] - c_opt[2]))
        # along: the symmetric family (J - J_min in units of 1e-6)
        s = np.linspace(0.98 * s_opt, 1.02 * s_opt, n)
        along = np.array([reduced(target, (-v, 0.0, v)) for v in s])
        s_off = (c_off[2] - c_off[0]) / 2
        ax = row[0]
        ax.plot(s, 1e6 * (along - j_min), color="C0", label="J*(-s, 0, s)")
        ax.plot(s_opt, 0.0, "*", color="C3", markersize=14, label=f"ours: s = {s_opt:.4f}, J = {j_min:.7f}")
        ax.plot(s_off, 1e6 * (theirs.objective_value - j_min), "x", color="k", markersize=9, mew=2,
                label=f"official (its own a): s = {s_off:.4f}, J = {theirs.objective_value:.7f}")
        ax.plot(s_off, 1e6 * (j_star_official - j_min), "+", color="C2", markersize=12, mew=2,
                label=f"official knots, best a: J* = {j_star_official:.7f}")
        ax.set(xlabel="s (outer knots at -s and s, middle knot at 0)", ylabel="J - J_min  (x 1e-6)",
               title=f"{act.approx_label}: along the symmetric family")
        # across: two directions that break the symmetry (an even count of points keeps d = 0 out of the log plot)
        d = np.linspace(-1.0, 1.0, n + 1) * 3 * max(off_outer, abs(c_off[1] - c_opt[1]))
        middle = np.array([reduced(target, c_opt + v * MIDDLE) for v in d])
        outer = np.array([reduced(target, c_opt + v * OUTER) for v in d])
        ax = row[1]
        ax.semilogy(d, np.maximum(middle - j_min, 1e-14), color="C0", label="middle knot moved: c_2 + d")
        ax.semilogy(d, np.maximum(outer - j_min, 1e-14), color="C1", label="outer knots shifted: c_1 + d, c_3 + d")
        d_mid, d_out = c_off[1] - c_opt[1], (c_off[0] + c_off[2] - c_opt[0] - c_opt[2]) / 2
        ax.plot(d_mid, reduced(target, c_opt + d_mid * MIDDLE) - j_min, "x", color="C0", markersize=9, mew=2,
                label=f"official's middle knot: d = {d_mid:+.5f}")
        ax.plot(d_out, reduced(target, c_opt + d_out * OUTER) - j_min, "x", color="C1", markersize=9, mew=2,
                label=f"official's outer-knot shift: d = {d_out:+.5f}")
        ax.set(xlabel="d", ylabel="J* - J_min (log scale)",
               title=f"{act.approx_label}: across the symmetric family, from ours")
        # the (c_1, c_3) plane
        half = 3 * off_outer
        c1 = np.linspace(c_opt[0] - half, c_opt[0] + half, m)
        c3 = np.linspace(c_opt[2] - half, c_opt[2] + half, m)
        excess = np.array([[reduced(target, (u, c_opt[1], v)) - j_min for u in c1] for v in c3])
        ax = row[2]
        contour = ax.contourf(c1, c3, np.log10(np.maximum(excess, 1e-12)), levels=16, cmap="viridis")
        fig.colorbar(contour, ax=ax, label="log10(J* - J_min)")
        ax.plot(c1, -c1, "--", color="m", linewidth=1.2, label="symmetric: c_3 = -c_1")
        ax.plot(c_opt[0], c_opt[2], "*", color="C3", markersize=14, label="ours")
        ax.plot(c_off[0], c_off[2], "x", color="k", markersize=9, mew=2, label="official")
        ax.set(xlabel="c_1", ylabel="c_3", title=f"{act.approx_label}: J* over (c_1, c_3), c_2 = {c_opt[1]:.3g}",
               xlim=(c1[0], c1[-1]), ylim=(c3[0], c3[-1]))
        for ax, loc in zip(row, ("upper center", "upper center", "lower right"), strict=True):
            ax.legend(fontsize=7.5, loc=loc)
        data["targets"][act.target] = {
            "ours": {"c": c_opt.tolist(), "a": list(ours.a), "J": j_min, "J_shipped": ours.objective_value},
            "official": {"c": c_off.tolist(), "a": list(theirs.a), "J_own_a": theirs.objective_value,
                         "J_star_at_its_knots": j_star_official},
            "along": {"s": s.tolist(), "J_star": along.tolist()},
            "across": {"d": d.tolist(), "middle_J_star_minus_min": (middle - j_min).tolist(),
                       "outer_J_star_minus_min": (outer - j_min).tolist()},
            "plane": {"c1": c1.tolist(), "c3": c3.tolist(), "c2": float(c_opt[1]),
                      "J_star_minus_min": [[float(f"{v:.6g}") for v in row] for row in excess]}}
    fig.tight_layout()
    return Drawing(fig, data)
