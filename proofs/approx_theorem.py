"""The Approx-BP theorem: what "h and h~ close in function space => their derivatives may be swapped in training" means.

h: the exact activation (GELU, SiLU); h~(x) = sum_i a_i relu(x - c_i) a shipped primitive-objective table
(sum a = 1, sum a c = 0), s = h~' its step function (levels L_j = a_1 + .. + a_j, jumps a_j at the knots c_j);
J = integral (h - h~)^2 dx the paper's objective; eps = sup|h - h~|; TV(s) = sum_j |a_j| (total variation of s).

(a) Exactly what Approx-BP computes.  For any network built from differentiable maps and elementwise h, the
    Approx-BP gradient (backward with s(z) in place of h'(z) at every activation) is the gradient of the h~-network
    in which every h~ value and every pre-activation is taken from the h-network's forward pass: by the chain rule
    only the activation's local Jacobian diag(h'(z)) -> diag(s(z)) changes.  Equivalently it is the autograd
    gradient of the network with h replaced by h_bwd(z) = h(z) + h~(z) - stopgrad(h~(z)) (value h, derivative s).
    Proved symbolically on a two-activation composition (generic h, s, loss) against the hand-written Approx-BP
    backward pass; checked in float64 through ``approxbp.approx_act`` (h_bwd built from the table's a, c).
    It is NOT the gradient of the h~-network itself: that one also sees h~'s values downstream (checked numerically).
(b) Forward gap.  |h(z) - h~(z)| <= eps for every z (so one hidden layer y = h(Z) W2^T moves by
    ||y - y~||_F <= ||W2||_2 ||h(Z) - h~(Z)||_F <= ||W2||_2 sqrt(n m) eps, and a loss sum(tanh(y)) by at most
    sqrt(n k) times that).  In mean square, for a pre-activation z with a density p <= p_max:
    E[(h(z) - h~(z))^2] = integral p (h - h~)^2 <= p_max J, so J is exactly what controls the forward gap in L2.
    Checked by quadrature for the shipped ReGELU2 / ReSiLU2 tables against normal densities (several means and
    scales).  J does NOT control the derivative gap: E[(h'(z) - s(z))^2] > p_max J for z ~ N(0, 1) (checked).
(c) Gradient gap.  s is discontinuous (jump a_j at c_j), so the h~-network's gradient is not Lipschitz, nor
    continuous, in its pre-activations: for every r > 0, sup_{|u| <= r} |s(c_j + u) - s(c_j)| >= |a_j|.  In
    expectation it is: for z with density p <= p_max and any perturbation u(z) with |u(z)| <= r (which may depend
    on z), E|s(z + u(z)) - s(z)| <= 2 r p_max TV(s), since s(z + u) != s(z) only if a knot lies within r of z, and
    P(|z - c_j| <= r) <= 2 r p_max.  With one hidden layer the pre-activations of the h- and h~-networks are equal,
    and for a loss whose gradient is beta-Lipschitz (sum(tanh(y)): beta = 4 / (3 sqrt 3)) the Approx-BP gradient
    and the h~-network's gradient differ by ||dW1 - dW1~||_F <= ||X||_2 ||s||_inf beta ||W2||_2^2 ||h(Z) - h~(Z)||_F.
    In deeper networks |z~_l - z_l| <= r is bounded by the forward gap, and the lemma bounds the expected change of
    the s-factors; no pointwise bound exists.
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import sympy as sp
from scipy.integrate import quad
from scipy.optimize import minimize_scalar

from approxbp.proofs.grad_bound import H, S, activation

TANH_GRAD_LIPSCHITZ = 4 / (3 * np.sqrt(3))  # max |tanh''|
H_TILDE = activation("h_tilde", S)  # h~ with h~' = s (value symbolic)
LOSS = activation("ell", sp.Function("dell"))  # a generic loss of the scalar output, with derivative dell


# ---------------------------------------------------------------- (a) symbolic


def _matrix(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}_{i}{j}", real=True))


def _network(d: int = 2, m: int = 2):
    """x (d) -> z1 = W1 x + b1 -> a1 = act(z1) -> z2 = W2 a1 + b2 -> a2 = act(z2) -> L = ell(w3 . a2)."""
    x, W1, b1 = _matrix("x", d, 1), _matrix("W1", m, d), _matrix("b1", m, 1)
    W2, b2, w3 = _matrix("W2", m, m), _matrix("b2", m, 1), _matrix("w3", m, 1)

    def forward(act):
        z1 = W1 * x + b1
        a1 = z1.applyfunc(act)
        z2 = W2 * a1 + b2
        a2 = z2.applyfunc(act)
        return LOSS((w3.T * a2)[0]), (z1, a1, z2, a2)

    return (x, W1, b1, W2, b2, w3), forward


def approx_bp_residuals(backward_derivative: sp.FunctionClass = S) -> list[sp.Matrix]:
    """(a): autograd of the h~-network with h~ -> h afterwards (values and pre-activations of the h-network) minus
    the hand-written Approx-BP backward (g_a2 = dell w3, dz = g * s(z), dW = dz a^T, g_a1 = W2^T dz2), for
    W1, b1, W2, b2 and x.  ``backward_derivative=DH`` writes the exact backward instead (must leave a residual)."""
    (x, W1, b1, W2, b2, w3), forward = _network()
    loss, _ = forward(H_TILDE)
    _, (z1, a1, z2, a2) = forward(H)
    dz2 = (w3 * sp.Function("dell")((w3.T * a2)[0])).multiply_elementwise(z2.applyfunc(backward_derivative))
    dz1 = (W2.T * dz2).multiply_elementwise(z1.applyfunc(backward_derivative))
    hand = [(W1, dz1 * x.T), (b1, dz1), (W2, dz2 * a1.T), (b2, dz2), (x, W1.T * dz1)]
    return [(wrt.applyfunc(lambda v: sp.diff(loss, v)).replace(H_TILDE, H) - value).applyfunc(sp.expand)
            for wrt, value in hand]


# ---------------------------------------------------------------- shipped tables


@cache
def primitive_table(target: str = "gelu", bits: int = 2) -> dict:
    """The shipped primitive-objective entry (a, c, levels, thresholds, J) of ``target`` at ``bits``."""
    from approxbp.kernels.constants import TABLES

    return TABLES[f"{target}/{bits}/primitive"]


def h_tilde_numpy(x: np.ndarray, target: str = "gelu", bits: int = 2) -> np.ndarray:
    entry = primitive_table(target, bits)
    return sum(a * np.maximum(np.asarray(x, dtype=np.float64) - c, 0.0) for a, c in zip(entry["a"], entry["c"],
                                                                                        strict=True))


@cache
def forward_sup_gap(target: str = "gelu", bits: int = 2) -> float:
    """eps = sup|h - h~|: dense grid over [-tail, tail] (h~ = relu and |h - relu| < 1e-18 beyond), refined by a
    bounded 1-D search around the best grid points."""
    from approxbp.targets import get_target

    t = get_target(target)
    gap = lambda x: np.abs(t.f(x) - h_tilde_numpy(x, target, bits))  # noqa: E731
    grid = np.linspace(-t.tail, t.tail, 200001)
    values, step = gap(grid), grid[1] - grid[0]
    best = float(values.max())
    for i in np.argsort(values)[-8:]:
        res = minimize_scalar(lambda u: -float(gap(np.array(u))), bounds=(grid[i] - step, grid[i] + step),
                              method="bounded", options={"xatol": 1e-13})
        best = max(best, -float(res.fun))
    return best


# ---------------------------------------------------------------- (b) mean-square forward gap, by quadrature


def mean_square_gaps(target: str = "gelu", bits: int = 2, mean: float = 0.0, scale: float = 1.0) -> dict[str, float]:
    """For z ~ N(mean, scale^2): E[(h - h~)^2], p_max J (p_max = 1 / (sqrt(2 pi) scale)), J recomputed by quadrature,
    and E[(h' - s)^2] (the derivative gap, which J does not control)."""
    from approxbp.targets import get_target

    t, entry = get_target(target), primitive_table(target, bits)
    density = lambda x: np.exp(-0.5 * ((x - mean) / scale) ** 2) / (np.sqrt(2 * np.pi) * scale)  # noqa: E731
    levels, knots = np.asarray(entry["levels"]), np.asarray(entry["c"])
    s = lambda x: levels[np.searchsorted(knots, x, side="right")]  # noqa: E731
    square_gap = lambda x: float((t.f(np.array(x)) - h_tilde_numpy(np.array(x), target, bits)) ** 2)  # noqa: E731
    edges = [-t.tail, *knots, t.tail]
    integrate = lambda f: sum(quad(f, lo, hi, epsabs=1e-14, epsrel=1e-12, limit=200)[0]  # noqa: E731
                              for lo, hi in itertools.pairwise(edges))
    wide = [-np.inf, *edges, np.inf]  # the derivative gap is integrated over R (h' - s -> 0 in the tails)
    return {
        "E (h - h~)^2": integrate(lambda x: density(x) * square_gap(x)),
        "p_max J": entry["objective_value"] / (np.sqrt(2 * np.pi) * scale),
        "J by quadrature": integrate(square_gap),
        "E (h' - s)^2": sum(quad(lambda x: density(x) * float((t.df(np.array(x)) - s(x)) ** 2), lo, hi,
                                 epsabs=1e-14, limit=200)[0] for lo, hi in itertools.pairwise(wide)),
    }


# ---------------------------------------------------------------- (c) the step function's expected jump


def expected_step_change(radius: float, target: str = "gelu", bits: int = 2) -> tuple[float, float]:
    """(E_z max_{|u| <= r} |s(z + u) - s(z)| for z ~ N(0, 1), the bound 2 r p_max TV(s)).  The worst u for each z
    is found exactly: s is constant between knots, so the max is over the levels of the intervals meeting
    [z - r, z + r]; the expectation is a sum over the pieces where that max is constant, by the normal CDF."""
    from scipy.stats import norm

    entry = primitive_table(target, bits)
    levels, knots = np.asarray(entry["levels"]), np.asarray(entry["c"])
    # the worst change is piecewise constant in z with breakpoints at c_j +- r and c_j
    points = np.unique(np.concatenate([knots - radius, knots, knots + radius]))
    edges = np.concatenate([[-np.inf], points, [np.inf]])
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        z = (lo + hi) / 2 if np.isfinite(lo) and np.isfinite(hi) else (hi - 1 if np.isfinite(hi) else lo + 1)
        first, last = np.searchsorted(knots, [z - radius, z + radius], side="right")
        worst = np.abs(levels[first:last + 1] - levels[np.searchsorted(knots, z, side="right")]).max()
        total += worst * (norm.cdf(hi) - norm.cdf(lo))
    p_max = 1 / np.sqrt(2 * np.pi)
    return float(total), float(2 * radius * p_max * np.abs(entry["a"]).sum())


def jumps_at_knots(target: str = "gelu", bits: int = 2) -> np.ndarray:
    """s(c_j) - s(c_j - ulp) through ``approxbp.ops.step`` (float64): the jumps a_j, however close the two inputs."""
    import torch

    from approxbp.ops.step import step
    from approxbp.tables import default_table

    knots = torch.tensor(primitive_table(target, bits)["c"], dtype=torch.float64)
    below = torch.nextafter(knots, torch.tensor(-np.inf, dtype=torch.float64))
    table = default_table(target, bits, "primitive")
    return (step(knots, table) - step(below, table)).numpy()


# ---------------------------------------------------------------- numeric checks through float64 MLPs


def _mlp_case(seed: int, layers: int, n: int = 6, d: int = 4, m: int = 5, k: int = 3, weight_scale: float = 1.5):
    import torch

    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    X = rand(n, d) * 2
    params = [(rand(m, d if i == 0 else m) * weight_scale, rand(m) * min(weight_scale, 1)) for i in range(layers)]
    return X, params, rand(k, m) / m**0.5


def _gradients(X, params, W_out, act):
    """Gradients of L = sum(tanh(MLP(X))) w.r.t. every W, b and X, plus (Z of layer 1, y = output)."""
    import torch

    leaves = [X.clone().requires_grad_()] + [t.clone().requires_grad_() for p in params for t in p]
    a, first = leaves[0], None
    for i in range(len(params)):
        z = a @ leaves[1 + 2 * i].T + leaves[2 + 2 * i]
        first = z.detach() if first is None else first
        a = act(z)
    y = a @ W_out.T
    torch.tanh(y).sum().backward()
    return [t.grad for t in leaves], first, y.detach()


def _activations(target: str, bits: int):
    """(h, Approx-BP op, h~ network activation, h_bwd = value h, derivative s) as torch callables."""
    import torch
    import torch.nn.functional as F

    from approxbp.ops.approx_act import approx_act

    entry = primitive_table(target, bits)
    exact = {"gelu": F.gelu, "silu": F.silu}[target]
    h_tilde = lambda z: sum(a * torch.relu(z - c) for a, c in zip(entry["a"], entry["c"], strict=True))  # noqa: E731
    h_bwd = lambda z: exact(z).detach() + h_tilde(z) - h_tilde(z).detach()  # noqa: E731
    return exact, lambda z: approx_act(z, target, bits), h_tilde, h_bwd


def approx_bp_is_h_bwd_gradient(seed: int = 0, layers: int = 2, target: str = "gelu",
                                bits: int = 2) -> dict[str, float]:
    """(a) numerically: max |Approx-BP grad - autograd with h_bwd| (~1e-15), and the relative distances of the
    Approx-BP gradient to the h-network's and to the h~-network's gradients (both > 0)."""
    import torch

    X, params, W_out = _mlp_case(seed, layers)
    exact, approx, h_tilde, h_bwd = _activations(target, bits)
    flat = lambda act: torch.cat([g.reshape(-1) for g in _gradients(X, params, W_out, act)[0]])  # noqa: E731
    g_approx, g_bwd, g_exact, g_tilde = flat(approx), flat(h_bwd), flat(exact), flat(h_tilde)
    rel = lambda a, b: float(torch.linalg.norm(a - b) / torch.linalg.norm(b))  # noqa: E731
    return {"max |Approx-BP - h_bwd autograd|": float((g_approx - g_bwd).abs().max()),
            "relative distance to the h-network gradient": rel(g_approx, g_exact),
            "relative distance to the h~-network gradient": rel(g_approx, g_tilde)}


def one_layer_gaps(seed: int = 0, weight_scale: float = 1.5, target: str = "gelu",
                   bits: int = 2) -> dict[str, tuple[float, float]]:
    """(b), (c) on one hidden layer, y = h(X W1^T + b1) W2^T, L = sum(tanh(y)): name -> (measured, bound) for the
    output gap ||y - y~||_F (a posteriori, a priori with eps, and a wrong bound with J for eps), the loss gap
    |L_h - L_h~| <= sqrt(n k) ||y - y~||_F, and the gradient gap between Approx-BP and the h~-network,
    ||dW1 - dW1~||_F <= ||X||_2 ||s||_inf beta ||W2||_2^2 ||h(Z) - h~(Z)||_F.  ``weight_scale`` scales W1 and b1
    (small: pre-activations near 0, where |h - h~| is largest)."""
    import torch

    X, params, W_out = _mlp_case(seed, 1, weight_scale=weight_scale)
    exact, approx, h_tilde, _ = _activations(target, bits)
    grads_approx, Z, y = _gradients(X, params, W_out, approx)
    grads_tilde, _, y_tilde = _gradients(X, params, W_out, h_tilde)
    n, m = Z.shape
    eps, entry = forward_sup_gap(target, bits), primitive_table(target, bits)
    spectral = lambda t: float(torch.linalg.matrix_norm(t, 2))  # noqa: E731
    value_gap, output_gap = float(torch.linalg.norm(exact(Z) - h_tilde(Z))), float(torch.linalg.norm(y - y_tilde))
    loss_gap = abs(float(torch.tanh(y).sum() - torch.tanh(y_tilde).sum()))
    s_inf = max(abs(v) for v in entry["levels"])
    return {
        "||y - y~||_F a posteriori": (output_gap, spectral(W_out) * value_gap),
        "||y - y~||_F": (output_gap, spectral(W_out) * (n * m) ** 0.5 * eps),
        "wrong: eps -> J": (output_gap, spectral(W_out) * (n * m) ** 0.5 * entry["objective_value"]),
        "|L_h - L_h~|": (loss_gap, y.numel() ** 0.5 * spectral(W_out) * (n * m) ** 0.5 * eps),
        "Approx-BP vs h~-network dW1": (float(torch.linalg.norm(grads_approx[1] - grads_tilde[1])),
                                        spectral(X) * s_inf * TANH_GRAD_LIPSCHITZ * spectral(W_out) ** 2 * value_gap),
    }


def main() -> None:
    assert all(r == sp.zeros(*r.shape) for r in approx_bp_residuals())
    print("(a) Approx-BP backward = gradient of the h~-network at the h-network's forward (symbolic, 2 layers)")
    for layers in (1, 2):
        r = approx_bp_is_h_bwd_gradient(layers=layers)
        assert r["max |Approx-BP - h_bwd autograd|"] < 1e-12, r
        print(f"    {layers} hidden layer(s), float64: " + ", ".join(f"{k} {v:.2e}" for k, v in r.items()))
    for target in ("gelu", "silu"):
        eps = forward_sup_gap(target)
        print(f"(b) {target}, 2 bits: sup|h - h~| = {eps:.5f}; mean-square gap vs p_max J (z ~ N(mean, scale^2)):")
        for mean, scale in ((0.0, 1.0), (0.0, 0.3), (3.0, 0.5), (1.0, 4.0)):
            g = mean_square_gaps(target, 2, mean, scale)
            J = primitive_table(target, 2)["objective_value"]
            forward, bound, derivative = g["E (h - h~)^2"], g["p_max J"], g["E (h' - s)^2"]
            assert forward <= bound and abs(g["J by quadrature"] / J - 1) < 1e-6, g
            print(f"    N({mean}, {scale}^2): E = {forward:.3e} <= p_max J = {bound:.3e}; "
                  f"E (h' - s)^2 = {derivative:.3e}")
    g = mean_square_gaps("gelu")
    assert g["E (h' - s)^2"] > g["p_max J"]
    print("    J does not control the derivative gap: E (h' - s)^2 > p_max J for GELU, z ~ N(0, 1)")
    jumps = jumps_at_knots()
    assert np.allclose(jumps, primitive_table()["a"], rtol=1e-12, atol=0)
    print(f"(c) s jumps by a = {np.round(jumps, 5)} across one ulp at the knots: no Lipschitz bound in z")
    for radius in (0.001, 0.05, 0.5):
        worst, bound = expected_step_change(radius)
        assert worst <= bound
        print(f"    |u| <= {radius}: E max |s(z + u) - s(z)| = {worst:.4e} <= 2 r p_max TV(s) = {bound:.4e}")
    for weight_scale in (1.5, 0.1):
        print(f"(b, c) one hidden layer, W1 scaled by {weight_scale} (float64):")
        for name, (measured, bound) in one_layer_gaps(weight_scale=weight_scale).items():
            assert measured <= bound or name.startswith("wrong"), (name, measured, bound)
            print(f"    {name}: {measured:.3e} {'>' if measured > bound else '<='} {bound:.3e}")
    measured, wrong_bound = one_layer_gaps(weight_scale=0.1)["wrong: eps -> J"]
    assert measured > wrong_bound


if __name__ == "__main__":
    main()
