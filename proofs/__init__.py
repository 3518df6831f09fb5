"""Symbolic derivations (sympy) behind approxbp's fits and ops; each module's ``main()`` checks and prints its claims.

primitive_constraints, step_optimality: the fitted tables; msbp_grad: MS-BP norms; folding: the affine fold and its
gradient mapping; grad_bound: Approx-BP's gradient error per layer and through residual blocks; approx_theorem: what
Approx-BP computes (the h~-network's gradient at the h-network's forward) and the h / h~ gaps.

Installed as ``approxbp.proofs`` (a top-level ``proofs`` package would collide with PyPI's).  Run one with
``python -m approxbp.proofs.<module>``."""
