"""Optimality conditions of the derivative and empirical objectives (``approxbp/fit/derivative.py``, ``empirical.py``).

E(t, L) = sum_j integral_{t_j}^{t_{j+1}} w(x) (g(x) - L_j)^2 dx, g = h' the target's derivative, w >= 0 a weight
(a density, the uniform weight on [-R, R], or the empirical measure of real pre-activations), t_0 = -oo, t_m = +oo.

Claim 1 (levels).  dE/dL_j = 0  <=>  L_j = integral w g / integral w over [t_j, t_{j+1}]: each level is the
weighted mean of h' on its interval, and E is convex in L, so this is the minimum for fixed borders.
Claim 2 (borders).  dE/dt_j = w(t_j) [(g(t_j) - L_{j-1})^2 - (g(t_j) - L_j)^2], which vanishes where w(t_j) > 0 and
L_{j-1} != L_j iff g(t_j) = (L_{j-1} + L_j) / 2: a border sits where h' crosses the midpoint of its two levels.
These are the Lloyd-Max conditions the fitter's Newton polish solves and its evidence reports as residuals.

Claim 3 (the paper's table is not stationary for E).  For the primitive objective the levels are cumulative sums of
a fitted to h, not means of h': evaluated on the shipped ReGELU2 table (standard normal weight), the level residual
of Claim 1 is far from 0, which is why approxbp also ships derivative tables.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from scipy.integrate import quad

x, t0, t1, t2, L0, L1 = sp.symbols("x t0 t1 t2 L0 L1", real=True)
w, g = sp.Function("w"), sp.Function("g")


def two_interval_error() -> sp.Expr:
    """E restricted to the two intervals that touch the border t1 (the others do not depend on t1, L0, L1)."""
    return (sp.Integral(w(x) * (g(x) - L0) ** 2, (x, t0, t1))
            + sp.Integral(w(x) * (g(x) - L1) ** 2, (x, t1, t2)))


def level_condition() -> sp.Expr:
    """dE/dL0 - (-2)(integral w g - L0 integral w): 0 means Claim 1's stationarity is exactly 'L0 = mean'."""
    E = two_interval_error()
    mean_form = -2 * (sp.Integral(w(x) * g(x), (x, t0, t1)) - L0 * sp.Integral(w(x), (x, t0, t1)))
    return sp.simplify(sp.expand(sp.diff(E, L0).doit() - mean_form.doit()))


def border_derivative() -> sp.Expr:
    """dE/dt1 by the Leibniz rule."""
    return sp.simplify(sp.diff(two_interval_error(), t1).doit())


def border_condition_residual() -> sp.Expr:
    """dE/dt1 - w(t1) (L1 - L0) (2 g(t1) - L0 - L1): factorises, so dE/dt1 = 0 <=> g(t1) = (L0 + L1) / 2."""
    return sp.simplify(sp.expand(border_derivative() - w(t1) * (L1 - L0) * (2 * g(t1) - L0 - L1)))


def shipped_level_residuals(target: str = "gelu", bits: int = 2, objective: str = "primitive") -> np.ndarray:
    """L_j - (weighted mean of h' on interval j), standard normal weight, for a shipped table (Claim 3)."""
    from approxbp.kernels.constants import TABLES
    from approxbp.targets import get_target

    entry, df = TABLES[f"{target}/{bits}/{objective}"], get_target(target).df
    edges = [-np.inf, *entry["thresholds"], np.inf]
    density = lambda u: np.exp(-u * u / 2)  # noqa: E731 (normalisation cancels in the mean)
    out = []
    for level, lo, hi in zip(entry["levels"], edges[:-1], edges[1:], strict=True):
        num = quad(lambda u: density(u) * float(df(np.array(u))), lo, hi, epsabs=1e-13)[0]
        out.append(level - num / quad(density, lo, hi, epsabs=1e-13)[0])
    return np.array(out)


def main() -> None:
    assert level_condition() == 0
    print("Claim 1: dE/dL_j = -2 (integral w h' - L_j integral w)  =>  L_j = weighted mean of h' on interval j")
    assert border_condition_residual() == 0
    print(f"Claim 2: dE/dt_j = {border_derivative()}\n"
          "         = w(t_j) (L_j - L_{j-1}) (2 h'(t_j) - L_{j-1} - L_j)  =>  h'(t_j) = (L_{j-1} + L_j) / 2")
    paper, ours = shipped_level_residuals(objective="primitive"), shipped_level_residuals(objective="derivative")
    assert np.abs(paper).max() > 1e-3 and np.abs(ours).max() < 1e-9
    print(f"Claim 3: level residuals (normal weight), ReGELU2 primitive table: {np.round(paper, 5)}; "
          f"derivative table: max {np.abs(ours).max():.1e}")


if __name__ == "__main__":
    main()
