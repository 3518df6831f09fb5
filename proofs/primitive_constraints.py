"""Why the paper's two constraints, and the reduction the primitive fitter (``approxbp/fit/primitive.py``) solves.

Claim 1.  For h~(x) = sum_i a_i relu(x - c_i) and a target h with h(x) -> 0 as x -> -inf and h(x) - x -> 0 as
x -> +inf fast enough (GELU, SiLU: exponentially), J = integral (h - h~)^2 dx is finite iff sum a = 1 and
sum a c = 0.  Left of min c, h~ = 0; right of max c, h~(x) = A x - B with A = sum a, B = sum a c, so
h - h~ ~ (1 - A) x + B there, and integral_{c_n}^R ((1 - A) x + B)^2 dx is unbounded in R unless A = 1 and B = 0.

Claim 2.  Under the constraints, h~ is the continuous piecewise-linear function with knots c_1 < ... < c_n that is
0 left of c_1, the identity right of c_n, and takes free values v_2 .. v_{n-1} at the interior knots
(v_1 = 0, v_n = c_n; for n = 1 both at once force c_1 = 0, plain ReLU); a_i is the slope change at c_i.
Conversely every such function satisfies the constraints.  So for fixed knots J is a convex quadratic in v (a P1
finite-element least-squares problem), and only the knots need a nonlinear search.

Claim 3.  h~' is the step function with levels L_0 = 0, L_j = a_1 + ... + a_j on [c_j, c_{j+1}), L_n = 1: these are
the emitted ``levels`` (cumulative sums of a), and the backward only needs the interval index of x.
"""

from __future__ import annotations

import sympy as sp


def tail_integral_diverges() -> sp.Expr:
    """Claim 1: the limit of integral_{c}^{R} ((1 - A) x + B)^2 dx as R -> oo, a polynomial in R."""
    x, c, R, A, B = sp.symbols("x c R A B", real=True)
    return sp.expand(sp.integrate(((1 - A) * x + B) ** 2, (x, c, R)))


def slopes_from_values(n: int) -> tuple[list[sp.Symbol], list[sp.Expr]]:
    """Claim 2: knots c_1..c_n and values v (v_1 = 0, v_n = c_n) -> the slopes s_0 = 0, s_1 .. s_{n-1}, s_n = 1 of
    the pieces left of c_1, between the knots, and right of c_n; a_i = s_i - s_{i-1} is the slope change at c_i."""
    c = list(sp.symbols(f"c1:{n + 1}", real=True))
    v = [sp.Integer(0), *sp.symbols(f"v2:{n}", real=True), c[-1]]
    return c, [sp.Integer(0)] + [(v[i + 1] - v[i]) / (c[i + 1] - c[i]) for i in range(n - 1)] + [sp.Integer(1)]


def constraint_residuals(n: int) -> tuple[sp.Expr, sp.Expr]:
    """sum a - 1 and sum a c for a_i = s_i - s_{i-1}: both are 0 for any knots and values.  Written first in
    slope symbols S_i (a linear form), then each S_i-term is replaced by its value and cancelled on its own, which
    keeps the check linear in n (one common denominator over 15 knots is out of sympy's reach)."""
    c, slopes = slopes_from_values(n)
    S = [sp.Integer(0), *sp.symbols(f"S1:{n}", real=True), sp.Integer(1)]
    a = [S[i + 1] - S[i] for i in range(n)]
    residuals = []
    for form in (sum(a) - 1, sum(ai * ci for ai, ci in zip(a, c, strict=True))):
        form = sp.expand(form)
        terms = [sp.cancel(form.coeff(S[i]) * slopes[i]) for i in range(1, n)]
        residuals.append(sp.expand(sum(terms) + form.subs({Si: 0 for Si in S[1:n]})))
    return residuals[0], residuals[1]


def derivative_levels(n: int) -> list[sp.Expr]:
    """Claim 3: h~'(x) on each interval (-oo, c_1), [c_1, c_2), ..., [c_n, oo), from the relu sum itself."""
    x = sp.Symbol("x", real=True)
    a, c = sp.symbols(f"a1:{n + 1}", real=True), sp.symbols(f"c1:{n + 1}", real=True)
    h = sum(ai * sp.Max(x - ci, 0) for ai, ci in zip(a, c, strict=True))
    dh = sp.diff(h, x)
    probes = [c[0] - 1] + [(c[j] + c[j + 1]) / 2 for j in range(n - 1)] + [c[-1] + 1]
    ordering = {c[j + 1]: c[j] + sp.Symbol(f"g{j + 1}", positive=True) for j in range(n - 1)}
    levels = []
    for p in probes:
        value = dh.subs(x, p)
        for _ in range(n):  # substitute c_{j+1} = c_j + g_j (g_j > 0) until the Heavisides resolve
            value = value.subs(ordering)
        levels.append(sp.simplify(value))
    return levels


def main() -> None:
    R, A, B = sp.symbols("R A B", real=True)
    tail = tail_integral_diverges()
    cubic = tail.coeff(R, 3)
    assert sp.simplify(cubic - (1 - A) ** 2 / 3) == 0 and tail.subs({A: 1, B: 0}) == 0
    print(f"Claim 1: integral_c^R ((1-A)x+B)^2 dx = {sp.factor(cubic)} R^3 + ... ; -> oo unless A = 1 and B = 0")
    for n in (2, 3, 4, 7, 15):
        s, m = constraint_residuals(n)
        assert s == 0 and m == 0, (n, s, m)
    print("Claim 2: knots + free interior values give sum a = 1 and sum a c = 0 identically (n = 2, 3, 4, 7, 15)")
    for n in (1, 3, 7):
        levels = derivative_levels(n)
        a = sp.symbols(f"a1:{n + 1}", real=True)
        expected = [sp.Integer(0)] + [sum(a[: j + 1]) for j in range(n)]
        assert all(sp.simplify(lv - ex) == 0 for lv, ex in zip(levels, expected, strict=True)), levels
    print("Claim 3: h~' = 0, a1, a1 + a2, ..., sum a on the successive intervals (n = 1, 3, 7)")


if __name__ == "__main__":
    main()
