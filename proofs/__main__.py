"""``python -m approxbp.proofs``: check and print every derivation."""

from approxbp.proofs import msbp_grad, primitive_constraints, step_optimality

for module in (primitive_constraints, step_optimality, msbp_grad):
    print(f"== {module.__name__}")
    module.main()
