"""``python -m approxbp.proofs``: check and print every derivation."""

from approxbp.proofs import approx_theorem, folding, grad_bound, msbp_grad, primitive_constraints, step_optimality

for module in (primitive_constraints, step_optimality, msbp_grad, folding, grad_bound, approx_theorem):
    print(f"== {module.__name__}")
    module.main()
