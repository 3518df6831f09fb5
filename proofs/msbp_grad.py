"""MS-BP: the input gradient of LayerNorm / RMSNorm (no affine) computed from the OUTPUT y and rstd.

LayerNorm: y = (x - mean(x)) * rstd, rstd = 1 / sqrt(var(x) + eps)  =>  dx = rstd * (g - mean(g) - y * mean(g * y))
RMSNorm:   y = x * rstd,             rstd = 1 / sqrt(mean(x^2) + eps) =>  dx = rstd * (g - y * mean(g * y))
for an upstream gradient g = dL/dy.  Proved here by differentiating the forward symbolically (full Jacobian, vector
length n) and comparing with the output-form formula; these are the formulas of ``approxbp/ops/ms_norm.py``.

The affine output-saving LayerNorm saves z = gamma * y + beta; with gy = gamma * gz it reuses the formula above,
dgamma = sum over rows of gz * y and dbeta = sum of gz, which is why recovering y = (z - beta) / gamma suffices.
"""

from __future__ import annotations

import sympy as sp


def norm_gradients(n: int, rms: bool) -> tuple[sp.Matrix, sp.Matrix]:
    """(J^T g from differentiating the forward, the output-form formula), both in terms of x, g and eps."""
    xs = sp.Matrix(sp.symbols(f"x1:{n + 1}", real=True))
    gs = sp.Matrix(sp.symbols(f"g1:{n + 1}", real=True))
    eps = sp.Symbol("eps", positive=True)
    mean = lambda v: sum(v) / n  # noqa: E731
    centred = xs if rms else xs - sp.ones(n, 1) * mean(xs)
    rstd = 1 / sp.sqrt(mean(centred.applyfunc(lambda e: e**2)) + eps)
    y = centred * rstd
    autograd = y.jacobian(xs).T * gs
    gy = mean(gs.multiply_elementwise(y))
    formula = rstd * (gs - y * gy - (sp.zeros(n, 1) if rms else sp.ones(n, 1) * mean(gs)))
    return autograd, formula


def residual(n: int, rms: bool) -> sp.Matrix:
    autograd, formula = norm_gradients(n, rms)
    return (autograd - formula).applyfunc(lambda e: sp.simplify(sp.together(e)))


def main() -> None:
    for rms in (False, True):
        for n in (1, 2, 3, 4):
            assert residual(n, rms) == sp.zeros(n, 1), (rms, n)
        print(f"{'RMSNorm' if rms else 'LayerNorm'}: gradient from (y, rstd) equals autograd of the forward, n = 1..4")


if __name__ == "__main__":
    main()
