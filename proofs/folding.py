"""MS-BP folding: a pre-norm's affine moved into the linear layers that read it (``approxbp/conversion/fold.py``).

y = norm(x) without affine (rows of Y: n x d), z = gamma * y + beta, and readers r (q, k, ...) with out_r = W_r z + b_r.

Claim 1 (forward).  W z + b = W' y + b' with W' = W diag(gamma), b' = b + W beta.
Claim 2 (gradients).  For any loss L of the readers' outputs, with G_r = dL/dout_r (n x m) the upstream gradients,
the gradients of the folded parameters (W'_r, b'_r) give those of the original ones:
    dL/dW_r = dL/dW'_r diag(gamma) + dL/db'_r beta^T,        dL/db_r = dL/db'_r,
    dL/dgamma = sum_r colsum(dL/dW'_r * W_r),                dL/dbeta = sum_r W_r^T dL/db'_r.
By the chain rule every gradient of the parameters is a linear function of the G_r alone, so checking the linear
functional L = sum_r <G_r, out_r> with symbolic G_r covers every loss.  Proved for two readers with symbolic
n x d inputs Y, m x d weights and d-vectors gamma, beta (both parametrisations differentiated by sympy).

Claim 3 (the code).  ``fold_into_linear`` computes W' and b' as above, and autograd's gradients of the folded
readers, mapped by Claim 2, equal autograd's gradients of the original (W, b, gamma, beta) (float64, a nonlinear loss
of two readers).
"""

from __future__ import annotations

import sympy as sp


def _matrix(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}_{i}{j}", real=True))


def _vector(name: str, size: int) -> sp.Matrix:
    return sp.Matrix(size, 1, lambda i, _: sp.Symbol(f"{name}_{i}", real=True))


def _grad(expr: sp.Expr, shape_like: sp.Matrix) -> sp.Matrix:
    return shape_like.applyfunc(lambda s: sp.diff(expr, s))


def forward_residual(n: int = 2, d: int = 3, m: int = 2) -> sp.Matrix:
    """Claim 1: (Z W^T + b) - (Y W'^T + b') over the n rows (0 when the fold is right)."""
    Y, W, b = _matrix("y", n, d), _matrix("w", m, d), _vector("b", m)
    gamma, beta = _vector("gamma", d), _vector("beta", d)
    ones = sp.ones(n, 1)
    Z = Y * sp.diag(*gamma) + ones * beta.T
    folded_w, folded_b = W * sp.diag(*gamma), b + W * beta
    return (Z * W.T + ones * b.T - (Y * folded_w.T + ones * folded_b.T)).applyfunc(sp.expand)


def gradient_residuals(n: int = 2, d: int = 2, m: int = 2, readers: int = 2, beta_term: bool = True) -> list[sp.Matrix]:
    """Claim 2: autograd of the original parametrisation minus the mapping of the folded one's gradients, for
    dL/dW_r, dL/db_r (every reader), dL/dgamma, dL/dbeta.  ``beta_term=False`` drops dL/db'_r beta^T from dL/dW_r
    (a wrong mapping, which must leave a residual)."""
    Y, gamma, beta = _matrix("y", n, d), _vector("gamma", d), _vector("beta", d)
    ones = sp.ones(n, 1)
    Z = Y * sp.diag(*gamma) + ones * beta.T
    Ws = [_matrix(f"w{r}", m, d) for r in range(readers)]
    bs = [_vector(f"b{r}", m) for r in range(readers)]
    Gs = [_matrix(f"G{r}", n, m) for r in range(readers)]  # upstream gradients dL/dout_r
    folded_Ws = [_matrix(f"wf{r}", m, d) for r in range(readers)]
    folded_bs = [_vector(f"bf{r}", m) for r in range(readers)]

    def loss(outs: list[sp.Matrix]) -> sp.Expr:
        return sum(sum(G.multiply_elementwise(out)) for G, out in zip(Gs, outs, strict=True))

    original = loss([Z * W.T + ones * b.T for W, b in zip(Ws, bs, strict=True)])
    folded = loss([Y * Wf.T + ones * bf.T for Wf, bf in zip(folded_Ws, folded_bs, strict=True)])
    at_fold = {}
    for W, b, Wf, bf in zip(Ws, bs, folded_Ws, folded_bs, strict=True):
        at_fold.update(zip(Wf, W * sp.diag(*gamma), strict=True))
        at_fold.update(zip(bf, b + W * beta, strict=True))
    dWf = [_grad(folded, Wf).subs(at_fold) for Wf in folded_Ws]
    dbf = [_grad(folded, bf).subs(at_fold) for bf in folded_bs]

    residuals = []
    for W, b, dW_f, db_f in zip(Ws, bs, dWf, dbf, strict=True):
        mapped_w = dW_f * sp.diag(*gamma) + (db_f * beta.T if beta_term else sp.zeros(m, d))
        residuals += [_grad(original, W) - mapped_w, _grad(original, b) - db_f]
    mapped_gamma = sum((dW_f.multiply_elementwise(W).T * sp.ones(m, 1) for dW_f, W in zip(dWf, Ws, strict=True)),
                       sp.zeros(d, 1))
    mapped_beta = sum((W.T * db_f for W, db_f in zip(Ws, dbf, strict=True)), sp.zeros(d, 1))
    residuals += [_grad(original, gamma) - mapped_gamma, _grad(original, beta) - mapped_beta]
    return [r.applyfunc(sp.expand) for r in residuals]


def fold_code_residual(n: int = 5, d: int = 4, m: int = 3, seed: int = 0, beta_term: bool = True) -> float:
    """Claim 3: max |autograd of (W, b, gamma, beta) - Claim 2's mapping of autograd of the readers folded by
    ``approxbp.conversion.fold.fold_into_linear``| (float64), plus the forward difference; two readers q, k (k
    without a bias: the fold gives it one), loss sum(tanh(q) * k) + sum(q^2)."""
    import copy

    import torch
    from torch import nn

    from approxbp.conversion.fold import fold_into_linear

    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    q, k = nn.Linear(d, m).double(), nn.Linear(d, m, bias=False).double()
    with torch.no_grad():
        for p in (*q.parameters(), *k.parameters()):
            p.copy_(rand(*p.shape))
    gamma, beta = (rand(d) + 2).requires_grad_(), rand(d).requires_grad_()
    y = rand(n, d)
    loss = lambda qo, ko: (torch.tanh(qo) * ko).sum() + (qo**2).sum()  # noqa: E731

    z = gamma * y + beta
    original = loss(q(z), k(z))
    original.backward()
    folded_q, folded_k = copy.deepcopy(q), copy.deepcopy(k)
    for p in (*folded_q.parameters(), *folded_k.parameters()):
        p.grad = None
    for linear in (folded_q, folded_k):
        fold_into_linear(linear, gamma.detach(), beta.detach())
    folded = loss(folded_q(y), folded_k(y))
    folded.backward()

    errors = [abs(float((original - folded).detach()))]
    g_gamma, g_beta = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    for orig, fold in ((q, folded_q), (k, folded_k)):
        dWf, dbf = fold.weight.grad, fold.bias.grad
        mapped_w = dWf * gamma.detach() + (torch.outer(dbf, beta.detach()) if beta_term else 0)
        errors.append(float((orig.weight.grad - mapped_w).abs().max()))
        if orig.bias is not None:
            errors.append(float((orig.bias.grad - dbf).abs().max()))
        g_gamma += (dWf * orig.weight.detach()).sum(0)
        g_beta += orig.weight.detach().T @ dbf
    errors += [float((gamma.grad - g_gamma).abs().max()), float((beta.grad - g_beta).abs().max())]
    return max(errors)


def main() -> None:
    assert forward_residual() == sp.zeros(2, 2)
    print("Claim 1: Z W^T + b = Y (W diag(gamma))^T + (b + W beta) (n = 2 rows, d = 3, m = 2, symbolic)")
    residuals = gradient_residuals()
    assert all(r == sp.zeros(*r.shape) for r in residuals)
    print("Claim 2: dL/dW = dL/dW' diag(gamma) + dL/db' beta^T, dL/db = dL/db',\n"
          "         dL/dgamma = sum_r colsum(dL/dW'_r * W_r), dL/dbeta = sum_r W_r^T dL/db'_r,\n"
          "         for two readers and symbolic upstream gradients (n = d = m = 2)")
    error = fold_code_residual()
    assert error < 1e-12, error
    print(f"Claim 3: fold_into_linear + the mapping give autograd of (W, b, gamma, beta): max |diff| = {error:.1e}")


if __name__ == "__main__":
    main()
