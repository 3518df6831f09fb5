"""The symbolic derivations hold (each check would fail if the formula the code uses were wrong)."""

import numpy as np
import pytest
import sympy as sp

from approxbp.proofs import msbp_grad, primitive_constraints, step_optimality


@pytest.mark.parametrize("n", [2, 3, 7, 15])
def test_values_at_knots_satisfy_both_constraints(n):
    assert primitive_constraints.constraint_residuals(n) == (0, 0)


def test_one_relu_must_sit_at_zero():
    # n = 1: v_1 = 0 and v_1 = c_1 at once, so sum a c = c_1 vanishes only for plain ReLU (the 1-bit table)
    assert primitive_constraints.constraint_residuals(1) == (0, sp.Symbol("c1", real=True))


def test_tail_integral_is_finite_only_under_the_constraints():
    R, A, B = sp.symbols("R A B", real=True)
    tail = primitive_constraints.tail_integral_diverges()
    assert sp.degree(tail, R) == 3 and tail.subs({A: 1, B: 0}) == 0
    assert sp.degree(tail.subs(A, 1), R) == 1  # B != 0 alone still diverges


@pytest.mark.parametrize("n", [1, 3])
def test_derivative_levels_are_cumulative_sums(n):
    a = sp.symbols(f"a1:{n + 1}", real=True)
    expected = [0] + [sum(a[: j + 1]) for j in range(n)]
    assert [sp.simplify(lv - ex) for lv, ex in zip(primitive_constraints.derivative_levels(n), expected,
                                                    strict=True)] == [0] * (n + 1)


def test_lloyd_max_conditions():
    assert step_optimality.level_condition() == 0
    assert step_optimality.border_condition_residual() == 0


def test_paper_table_is_not_stationary_for_the_derivative_objective_but_ours_is():
    assert np.abs(step_optimality.shipped_level_residuals(objective="primitive")).max() > 0.1
    assert np.abs(step_optimality.shipped_level_residuals(objective="derivative")).max() < 1e-9


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("n", [1, 3])
def test_norm_gradient_from_output_equals_autograd(n, rms):
    assert msbp_grad.residual(n, rms) == sp.zeros(n, 1)


def test_a_wrong_norm_formula_is_caught():
    autograd, formula = msbp_grad.norm_gradients(2, rms=False)
    wrong = formula + sp.Matrix([1, 0]) * formula[0]
    assert any(sp.simplify(e) != 0 for e in autograd - wrong)
