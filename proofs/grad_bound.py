"""The gradient error of Approx-BP, layer by layer and through L residual blocks.

Notation.  One MLP layer: z = X W1^T + 1 b1^T (X: n x d, rows = tokens; W1: m x d), a = h(z), g = dL/da (n x m, the
upstream gradient at the activation's output).  Exact: dz = g * h'(z); Approx-BP: dz~ = g * s(z), s the step function
of the table; delta = sup_x |h'(x) - s(x)| (``approxbp.evidence.tables.sup_gap``), ||s||_inf = max_j |L_j|.
||.||_F Frobenius, ||.||_2 spectral norm (largest singular value), * elementwise.  D = g * (s(z) - h'(z)).

Identities (exact algebra; sympy, generic h, h', s, symbolic matrices n = d = m = 2; L any loss, since every gradient
below depends on L only through g):
  (i)   dz~ - dz = D;   (ii) dW1~ - dW1 = D^T X,  db1~ - db1 = D^T 1;   (iii) dX~ - dX = D W1;
  (iv)  upstream error e = g~ - g (later layers approximated too): dz~ - dz = e * s(z) + D, dW1~ - dW1 = (dz~ - dz)^T X;
  (v)   a block u -> u + h((P u) W1^T + b1) W2^T + b2 (one token; P any linear map before the MLP, e.g. a norm's
        Jacobian) has backward map B = I + W2 diag(h'(z)) W1 P, Approx-BP B~ = I + W2 diag(s(z)) W1 P, both at the same
        forward, so (B~ - B)^T g = P^T W1^T ((s(z) - h'(z)) * g^a) with g^a = W2^T g, the exact gradient at the
        activation output.  With g_l the exact gradient at block l's output and e_l the error there (e_L = 0: the
        head is exact): e_{l-1} = B~_l^T e_l + (B~_l - B_l)^T g_l, hence
        e_0 = sum_l B~_1^T .. B~_{l-1}^T (B~_l - B_l)^T g_l (checked symbolically for L = 2 blocks).
Inequalities (from the identities, |D| <= |g| delta elementwise, ||A B||_F <= ||A||_2 ||B||_F, ||A * B||_F <=
max|A| ||B||_F and ||1^T D||_2 <= sqrt(n) ||D||_F; verified numerically, including matrices attaining equality):
  (i)   |dz~ - dz| <= |g| |h'(z) - s(z)| <= |g| delta elementwise;
  (ii)  ||dW1~ - dW1||_F <= ||X||_2 ||D||_F <= ||X||_2 ||g||_F delta;   ||db1~ - db1||_2 <= sqrt(n) ||g||_F delta;
  (iii) ||dX~ - dX||_F <= ||W1||_2 ||g||_F delta;
  (iv)  ||dW1~ - dW1||_F <= ||X||_2 (||s||_inf ||e||_F + delta ||g||_F);
  (v)   ||e_0||_F <= sum_l (prod_{k<l} ||B~_k||_2) ||(B~_l - B_l)^T g_l||_F
                   <= sum_l (prod_{k<l} ||B~_k||_2) ||P_l||_2 ||W1_l||_2 delta ||g^a_l||_F,
        n tokens: B, P act on the flattened n x d block input (P_l: the Jacobian from block l's input to its MLP input,
        e.g. LayerNorm's), ||I_n (x) W1||_2 = ||W1||_2; e_0 is measured at the input of block 1.
The middle forms (||X||_2 ||D||_F, the sum over ||(B~_l - B_l)^T g_l||) are the sharpest a-posteriori bounds; they
need h'(z) and the exact g, which the a-priori forms replace by delta and ||g||_F.  Assumptions: h differentiable at
every z reached (GELU, SiLU: everywhere), the same forward pass for both backward passes (Approx-BP keeps the exact
forward), an exact head (e_L = 0).  Numerically (torch float64, primitive tables at 2-4 bits): every bound holds on
random one-layer, two-layer and two-block pre-LN residual MLPs, and the wrong bounds are violated in the cases built
for them: no ||X||_2 factor (an outlier feature), delta replaced by the paper's objective J (ReGELU2: J = 0.0095 vs
delta = 0.55; the a-priori (v) has enough slack that J survives at some seeds, so only the seeds shown are asserted).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import sympy as sp

SLACK = 1e-10  # relative float slack on measured <= bound (float64, a few hundred operations)


def activation(name: str, derivative: sp.FunctionClass) -> sp.FunctionClass:
    """A sympy function with a symbolic value and the given derivative: ``H`` is h with h', ``H_APPROX`` is the
    Approx-BP activation (forward h, backward s)."""
    return type(name, (sp.Function,), {"fdiff": lambda self, argindex=1: derivative(self.args[0])})


DH, S = sp.Function("dh"), sp.Function("s")
H, H_APPROX = activation("h", DH), activation("h_approx", S)


def _matrix(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}_{i}{j}", real=True))


def _grad(expr: sp.Expr, wrt: sp.Matrix) -> sp.Matrix:
    return wrt.applyfunc(lambda v: sp.diff(expr, v))


def _zero(m: sp.Matrix) -> bool:
    return m.applyfunc(sp.expand) == sp.zeros(*m.shape)


def layer_residuals(n: int = 2, d: int = 2, m: int = 2, upstream_term: bool = True) -> dict[str, sp.Matrix]:
    """(i)-(iv) for L = sum(g * a) (any loss, by the chain rule): Approx-BP minus exact minus the claimed formula.
    ``upstream_term=False`` drops e * s(z) from (iv) (a wrong formula, which must leave a residual)."""
    X, W1, b1 = _matrix("x", n, d), _matrix("w", m, d), _matrix("b", m, 1)
    g, e, Zs = _matrix("g", n, m), _matrix("e", n, m), _matrix("z", n, m)
    Z = X * W1.T + sp.ones(n, 1) * b1.T
    D = g.multiply_elementwise(Z.applyfunc(S) - Z.applyfunc(DH))
    loss = lambda act, up, pre: sum(up.multiply_elementwise(pre.applyfunc(act)))  # noqa: E731
    exact, approx, upstream = loss(H, g, Z), loss(H_APPROX, g, Z), loss(H_APPROX, g + e, Z)
    return {
        "i dz": _grad(loss(H_APPROX, g, Zs) - loss(H, g, Zs), Zs)
                - g.multiply_elementwise(Zs.applyfunc(S) - Zs.applyfunc(DH)),
        "ii dW1": _grad(approx - exact, W1) - D.T * X,
        "ii db1": _grad(approx - exact, b1) - D.T * sp.ones(n, 1),
        "iii dX": _grad(approx - exact, X) - D * W1,
        "iv dW1": _grad(upstream - exact, W1) - (e.multiply_elementwise(Z.applyfunc(S)) * int(upstream_term) + D).T * X,
    }


def _block(u: sp.Matrix, params: dict, act: sp.FunctionClass) -> tuple[sp.Matrix, sp.Matrix]:
    z = params["W1"] * params["P"] * u + params["b1"]
    return u + params["W2"] * z.applyfunc(act) + params["b2"], z


def _block_params(tag: str, d: int, m: int) -> dict:
    return {"P": _matrix(f"P{tag}", d, d), "W1": _matrix(f"W1{tag}", m, d), "b1": _matrix(f"b1{tag}", m, 1),
            "W2": _matrix(f"W2{tag}", d, m), "b2": _matrix(f"b2{tag}", d, 1)}


def _backward_gap(params: dict, z: sp.Matrix, g: sp.Matrix) -> sp.Matrix:
    """(B~ - B)^T g by the claimed formula P^T W1^T ((s(z) - h'(z)) * W2^T g)."""
    return params["P"].T * params["W1"].T * (z.applyfunc(S) - z.applyfunc(DH)).multiply_elementwise(params["W2"].T * g)


def block_residuals(d: int = 2, m: int = 2, wrong_activation_gap: bool = False) -> dict[str, sp.Matrix]:
    """(v): one block's (B~ - B)^T g minus the formula, and for two blocks e_0 - (B~_1^T d_2 + d_1), d_l the formula
    at block l (g_1 = B_2^T g_2).  ``wrong_activation_gap`` uses h' - s for s - h' in d_1 (must leave a residual)."""
    u0, w, g2 = _matrix("u", d, 1), _matrix("v", d, 1), _matrix("g", d, 1)
    p1, p2 = _block_params("a", d, m), _block_params("b", d, m)
    exact = lambda expr: expr.replace(H_APPROX, H)  # noqa: E731 (same forward values in both passes)
    out1, z1 = _block(u0, p1, H)
    B1, B1_approx = out1.jacobian(u0), exact(_block(u0, p1, H_APPROX)[0].jacobian(u0))
    one_block = (B1_approx - B1).T * g2 - _backward_gap(p1, z1, g2)
    out2_exact = _block(_block(u0, p1, H)[0], p2, H)[0]
    out2_approx = _block(_block(u0, p1, H_APPROX)[0], p2, H_APPROX)[0]
    e0 = exact(out2_approx.jacobian(u0)).T * g2 - out2_exact.jacobian(u0).T * g2
    on_out1 = dict(zip(w, out1, strict=True))
    out2_at_w, z2_at_w = _block(w, p2, H)
    B2 = out2_at_w.jacobian(w).subs(on_out1)
    d2 = _backward_gap(p2, z2_at_w.subs(on_out1), g2)
    d1 = _backward_gap(p1, z1, B2.T * g2)
    return {"v one block": one_block, "v two blocks": e0 - (B1_approx.T * d2 + (-d1 if wrong_activation_gap else d1))}


def norm_inequality_margins(seed: int = 0, trials: int = 200) -> dict[str, tuple[float, float]]:
    """(smallest relative margin over random matrices, relative margin at an equality case) for the three
    inequalities the bounds use: every margin >= 0, the equality cases ~0 (so no inequality is loose by design)."""
    rng = np.random.default_rng(seed)
    spectral = lambda a: np.linalg.norm(a, 2)  # noqa: E731
    fro = np.linalg.norm
    margins = {"||AB||_F <= ||A||_2 ||B||_F": [], "||A*B||_F <= max|A| ||B||_F": [],
               "||1^T D||_2 <= sqrt(n) ||D||_F": []}
    for _ in range(trials):
        n, k, m = rng.integers(1, 7, size=3)
        A, B = rng.standard_normal((n, k)) * rng.exponential(), rng.standard_normal((k, m))
        margins["||AB||_F <= ||A||_2 ||B||_F"].append(1 - fro(A @ B) / (spectral(A) * fro(B)))
        C = rng.standard_normal((n, k)) ** 3
        margins["||A*B||_F <= max|A| ||B||_F"].append(1 - fro(A * C) / (np.abs(A).max() * fro(C)))
        margins["||1^T D||_2 <= sqrt(n) ||D||_F"].append(1 - fro(A.sum(0)) / (np.sqrt(n) * fro(A)))
    A = rng.standard_normal((4, 3))
    top = np.linalg.svd(A)[2][0]
    B, row = np.outer(top, rng.standard_normal(5)), rng.standard_normal(3)
    equal = {"||AB||_F <= ||A||_2 ||B||_F": 1 - fro(A @ B) / (spectral(A) * fro(B)),
             "||A*B||_F <= max|A| ||B||_F": 1 - fro(np.full((4, 3), 2.0) * A) / (2.0 * fro(A)),
             "||1^T D||_2 <= sqrt(n) ||D||_F": 1 - fro(np.tile(row, (4, 1)).sum(0)) / (2.0 * fro(np.tile(row, (4, 1))))}
    return {name: (min(values), equal[name]) for name, values in margins.items()}


# ---------------------------------------------------------------- numeric checks through small float64 networks


@cache
def _table_constants(target: str, bits: int, objective: str) -> tuple[object, float, float, float]:
    """(table, delta = sup|h' - s|, ||s||_inf, the table's objective value J)."""
    from approxbp.evidence.tables import sup_gap
    from approxbp.kernels.constants import TABLES
    from approxbp.tables import default_table

    table = default_table(target, bits, objective)
    return (table, sup_gap(table, target), max(abs(v) for v in table.levels),
            TABLES[f"{target}/{bits}/{objective}"]["objective_value"])


def _exact_derivative(z):
    """GELU'(z) = Phi(z) + z phi(z) (erf form)."""
    import torch

    return 0.5 * (1 + torch.erf(z / 2**0.5)) + z * torch.exp(-z * z / 2) / (2 * torch.pi) ** 0.5


def one_layer_bounds(seed: int = 0, n: int = 6, d: int = 5, m: int = 7, outlier: float = 0.0,
                     bits: int = 2) -> dict[str, tuple[float, float]]:
    """name -> (measured, bound) for (i)-(iii) on z = X W1^T + b1, a = GELU(z), L = sum(tanh(a W2^T)), the
    primitive-objective GELU table at ``bits`` (ReGELU2 at 2); (i) as (max |dz~ - dz| / (|g| delta), 1).
    ``outlier`` is added to feature 0 of every token, which W1 ignores (an outlier feature, as in LLMs: z is
    unchanged, dW1's column 0 grows).  Two wrong bounds: 'wrong: no ||X||_2', 'wrong: delta -> J'."""
    import torch
    import torch.nn.functional as F

    from approxbp.ops.approx_act import approx_act

    table, delta, _, J = _table_constants("gelu", bits, "primitive")
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64) * 3
    W1 = torch.randn(m, d, generator=gen, dtype=torch.float64) / d**0.5
    if outlier:
        X[:, 0] += outlier
        W1[:, 0] = 0
    b1, W2 = torch.randn(m, generator=gen, dtype=torch.float64), torch.randn(3, m, generator=gen, dtype=torch.float64)

    def run(act):
        x, w, b = (t.clone().requires_grad_() for t in (X, W1, b1))
        z = x @ w.T + b
        a = act(z)
        z.retain_grad()
        a.retain_grad()
        torch.tanh(a @ W2.T).sum().backward()
        return z.grad, a.grad, w.grad, b.grad, x.grad

    dz, g, dW, db, dX = run(F.gelu)
    dz_a, _, dW_a, db_a, dX_a = run(lambda z: approx_act(z, "gelu", table=table))
    fro, spectral = torch.linalg.norm, lambda t: float(torch.linalg.matrix_norm(t, 2))
    measured_w = float(fro(dW_a - dW))
    z = X @ W1.T + b1
    from approxbp.ops.step import step

    gap = g * (_exact_derivative(z) - step(z, table))
    nonzero = g.abs() > 0
    return {
        "(i) |dz~ - dz| / (|g| delta)": (float(((dz_a - dz).abs()[nonzero] / (g.abs()[nonzero] * delta)).max()), 1.0),
        "(ii) dW1, a posteriori": (measured_w, spectral(X) * float(fro(gap))),
        "(ii) dW1": (measured_w, spectral(X) * float(fro(g)) * delta),
        "(ii) db1": (float(fro(db_a - db)), n**0.5 * float(fro(g)) * delta),
        "(iii) dX": (float(fro(dX_a - dX)), spectral(W1) * float(fro(g)) * delta),
        "wrong: no ||X||_2": (measured_w, float(fro(g)) * delta),
        "wrong: delta -> J": (measured_w, spectral(X) * float(fro(g)) * J),
    }


def two_layer_bounds(seed: int = 1, n: int = 5, d: int = 4, m: int = 6,
                     bits: int = 2) -> dict[str, tuple[float, float]]:
    """(iv) on X -> GELU(X W1^T + b1) -> GELU(. W2^T + b2) -> L = sum(tanh(. W3^T)), both activations Approx-BP:
    measured ||dW1~ - dW1||_F against ||X||_2 (||s||_inf ||e||_F + delta ||g||_F) with e the measured upstream error;
    also the identity dz~ - dz = e * s(z) + D as (max |residual|, 0)."""
    import torch
    import torch.nn.functional as F

    from approxbp.ops.approx_act import approx_act
    from approxbp.ops.step import step

    table, delta, s_inf, _ = _table_constants("gelu", bits, "primitive")
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    X, W1, b1, W2, b2, W3 = rand(n, d) * 2, rand(m, d) / d**0.5, rand(m), rand(m, m) / m**0.5, rand(m), rand(2, m)

    def run(act):
        w = W1.clone().requires_grad_()
        z = X @ w.T + b1
        a = act(z)
        z.retain_grad()
        a.retain_grad()
        torch.tanh(act(a @ W2.T + b2) @ W3.T).sum().backward()
        return z.grad, a.grad, w.grad

    dz, g, dW = run(F.gelu)
    dz_a, g_a, dW_a = run(lambda t: approx_act(t, "gelu", table=table))
    z, e = X @ W1.T + b1, g_a - g
    identity = dz_a - dz - (e * step(z, table) + g * (step(z, table) - _exact_derivative(z)))
    fro = torch.linalg.norm
    bound = float(torch.linalg.matrix_norm(X, 2)) * (s_inf * float(fro(e)) + delta * float(fro(g)))
    return {"(iv) identity": (float(identity.abs().max()), 0.0), "(iv) dW1": (float(fro(dW_a - dW)), bound)}


def residual_network_bounds(seed: int = 2, n: int = 3, d: int = 4, m: int = 8, blocks: int = 2,
                            bits: int = 2) -> dict[str, tuple[float, float]]:
    """(v) on ``blocks`` pre-LN residual MLP blocks u <- u + GELU(LN(u) W1^T + b1) W2^T + b2 (LayerNorm without
    affine), head L = sum(tanh(u W_head^T)), every activation Approx-BP.  e_0 = dX~ - dX; Jacobians B, B~, P
    materialised (n d x n d) with exact spectral norms.  Returns the identity residual, the a-posteriori and the
    a-priori bound, and the wrong bound with delta -> J."""
    import torch
    import torch.nn.functional as F
    from torch.autograd.functional import jacobian

    from approxbp.ops.approx_act import approx_act

    table, delta, _, J = _table_constants("gelu", bits, "primitive")
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    params = [(rand(m, d) / d**0.5 * 2, rand(m), rand(d, m) / m**0.5, rand(d) * 0.1) for _ in range(blocks)]
    X, W_head = rand(n, d), rand(3, d)
    exact, approx = F.gelu, lambda t: approx_act(t, "gelu", table=table)
    norm = lambda u: F.layer_norm(u, (d,))  # noqa: E731
    block = lambda u, p, act: u + act(norm(u) @ p[0].T + p[1]) @ p[2].T + p[3]  # noqa: E731

    def run(act):
        u, inputs, outputs, acts = X.clone().requires_grad_(), [], [], []
        x = u
        for p in params:
            inputs.append(u.detach())
            a = act(norm(u) @ p[0].T + p[1])
            u = u + a @ p[2].T + p[3]
            for t in (a, u):
                t.retain_grad()
            acts.append(a)
            outputs.append(u)
        torch.tanh(u @ W_head.T).sum().backward()
        return x.grad, inputs, [o.grad for o in outputs], [a.grad for a in acts]

    dX, inputs, g_out, g_act = run(exact)
    dX_a = run(approx)[0]
    flat = lambda f, u: jacobian(f, u).reshape(n * d, n * d)  # noqa: E731
    B = [flat(lambda u, p=p: block(u, p, exact), x) for p, x in zip(params, inputs, strict=True)]
    B_a = [flat(lambda u, p=p: block(u, p, approx), x) for p, x in zip(params, inputs, strict=True)]
    P = [flat(norm, x) for x in inputs]
    spectral = lambda t: float(torch.linalg.matrix_norm(t, 2))  # noqa: E731
    gaps = [(Ba - Be).T @ g.reshape(-1) for Ba, Be, g in zip(B_a, B, g_out, strict=True)]
    unrolled, prefix = torch.zeros(n * d, dtype=torch.float64), torch.eye(n * d, dtype=torch.float64)
    product = 1.0  # prod_{k<l} ||B~_k||_2
    posterior = prior = wrong = 0.0
    for Ba, gap, p, Pl, ga in zip(B_a, gaps, params, P, g_act, strict=True):
        unrolled += prefix @ gap  # prefix = B~_1^T .. B~_{l-1}^T
        posterior += product * float(torch.linalg.norm(gap))
        a_priori = product * spectral(Pl) * spectral(p[0]) * float(torch.linalg.norm(ga))
        prior, wrong = prior + a_priori * delta, wrong + a_priori * J
        prefix, product = prefix @ Ba.T, product * spectral(Ba)
    measured = float(torch.linalg.norm(dX_a - dX))
    return {"(v) identity": (float((unrolled - (dX_a - dX).reshape(-1)).abs().max()), 0.0),
            "(v) a posteriori": (measured, posterior), "(v) a priori": (measured, prior),
            "wrong: delta -> J": (measured, wrong)}


def violations(results: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """The entries where measured > bound (1 + SLACK) (an identity's bound is 0: residual > 1e-12); wrong bounds
    are expected here, proven ones never."""
    return {name: (measured, bound) for name, (measured, bound) in results.items()
            if measured > (bound * (1 + SLACK) if bound else 1e-12)}


def main() -> None:
    for name, residual in {**layer_residuals(), **block_residuals()}.items():
        assert _zero(residual), name
    print("identities (i)-(iv) (n = d = m = 2) and (v) (one block; two blocks unrolled) hold symbolically")
    for name, (worst, equality) in norm_inequality_margins().items():
        assert worst > -1e-12 and abs(equality) < 1e-12, (name, worst, equality)
        print(f"  {name}: smallest relative margin {worst:.1e} over 200 random cases, {equality:.1e} when tight")
    cases = {"one layer": one_layer_bounds(), "one layer, outlier feature 30": one_layer_bounds(outlier=30.0),
             "two layers": two_layer_bounds(), "two pre-LN residual blocks": residual_network_bounds()}
    for case, results in cases.items():
        broken = violations(results)
        assert not [name for name in broken if not name.startswith("wrong")], (case, broken)
        print(f"{case} (float64, ReGELU2): measured / bound")
        for name, (measured, bound) in results.items():
            ratio = f"{measured / bound:.3f}" if bound else f"residual {measured:.1e}"
            print(f"  {name:32s} {ratio}{'  (violated)' if name in broken else ''}")
    assert "wrong: no ||X||_2" in violations(cases["one layer, outlier feature 30"])
    assert all("wrong: delta -> J" in violations(r) for r in cases.values() if "wrong: delta -> J" in r)


if __name__ == "__main__":
    main()
