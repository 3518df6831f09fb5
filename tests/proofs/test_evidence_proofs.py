"""The folding, gradient-bound and Approx-BP-theorem proofs hold, and each check fails on a deliberately wrong claim."""

import numpy as np
import pytest
import sympy as sp

from approxbp.proofs import approx_theorem, folding, grad_bound


def is_zero(matrix: sp.Matrix) -> bool:
    return matrix.applyfunc(sp.expand) == sp.zeros(*matrix.shape)


# ---------------------------------------------------------------- folding


def test_folded_linear_computes_the_same_output():
    assert is_zero(folding.forward_residual(n=2, d=3, m=2))


def test_fold_gradient_mapping_holds_for_two_readers():
    assert all(is_zero(r) for r in folding.gradient_residuals(readers=2))


def test_fold_gradient_mapping_without_the_beta_term_is_caught():
    residuals = folding.gradient_residuals(beta_term=False)
    assert not is_zero(residuals[0])  # dL/dW of the first reader
    assert is_zero(residuals[1])  # dL/db does not involve the dropped term


def test_fold_into_linear_and_the_mapping_reproduce_autograd():
    assert folding.fold_code_residual() < 1e-12
    assert folding.fold_code_residual(beta_term=False) > 1e-3


# ---------------------------------------------------------------- gradient-error bound


def test_one_layer_identities_i_to_iv():
    residuals = grad_bound.layer_residuals()
    assert set(residuals) == {"i dz", "ii dW1", "ii db1", "iii dX", "iv dW1"}
    assert all(is_zero(r) for r in residuals.values())


def test_upstream_identity_without_the_error_term_is_caught():
    assert not is_zero(grad_bound.layer_residuals(upstream_term=False)["iv dW1"])


def test_block_backward_identities_v():
    assert all(is_zero(r) for r in grad_bound.block_residuals().values())
    assert not is_zero(grad_bound.block_residuals(wrong_activation_gap=True)["v two blocks"])


def test_norm_inequalities_hold_and_are_attained():
    for name, (worst, equality) in grad_bound.norm_inequality_margins().items():
        assert worst > -1e-12, name
        assert abs(equality) < 1e-12, name


@pytest.mark.parametrize("outlier", [0.0, 30.0])
def test_one_layer_bounds_hold_and_wrong_bounds_fail(outlier):
    results = grad_bound.one_layer_bounds(outlier=outlier)
    broken = grad_bound.violations(results)
    assert all(name.startswith("wrong") for name in broken), broken
    assert "wrong: delta -> J" in broken
    if outlier:
        assert "wrong: no ||X||_2" in broken  # an outlier feature W1 ignores: ||X||_2 is needed
    assert results["(ii) dW1, a posteriori"][1] <= results["(ii) dW1"][1]  # the sharper form is sharper


def test_two_layer_upstream_bound_iv():
    results = grad_bound.two_layer_bounds()
    assert results["(iv) identity"][0] < 1e-12
    assert not grad_bound.violations(results)


def test_residual_network_bound_v():
    results = grad_bound.residual_network_bounds()
    assert results["(v) identity"][0] < 1e-12
    assert set(grad_bound.violations(results)) == {"wrong: delta -> J"}
    assert results["(v) a posteriori"][1] <= results["(v) a priori"][1]


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("seed", [3, 4, 5])
def test_proven_bounds_hold_for_other_seeds_and_bits(seed, bits):
    for results in (grad_bound.one_layer_bounds(seed=seed, bits=bits),
                    grad_bound.one_layer_bounds(seed=seed, bits=bits, outlier=30.0),
                    grad_bound.two_layer_bounds(seed=seed, bits=bits),
                    grad_bound.residual_network_bounds(seed=seed, bits=bits)):
        assert all(name.startswith("wrong") for name in grad_bound.violations(results)), results


def test_the_a_priori_weight_bound_is_within_100x_of_the_measured_error():
    measured, bound = grad_bound.one_layer_bounds()["(ii) dW1"]
    assert measured > bound * 0.01  # not vacuous: a delta 100x smaller would be violated


# ---------------------------------------------------------------- the Approx-BP theorem


def test_approx_bp_is_the_h_tilde_gradient_at_the_h_forward():
    assert all(is_zero(r) for r in approx_theorem.approx_bp_residuals())
    assert not all(is_zero(r) for r in approx_theorem.approx_bp_residuals(backward_derivative=grad_bound.DH))


@pytest.mark.parametrize("target", ["gelu", "silu"])
@pytest.mark.parametrize("layers", [1, 2])
def test_approx_act_equals_autograd_with_h_tilde_in_the_backward_only(layers, target):
    r = approx_theorem.approx_bp_is_h_bwd_gradient(layers=layers, target=target)
    assert r["max |Approx-BP - h_bwd autograd|"] < 1e-12
    assert r["relative distance to the h-network gradient"] > 1e-3
    assert r["relative distance to the h~-network gradient"] > 1e-3  # not the h~-network's own gradient


@pytest.mark.parametrize("target", ["gelu", "silu"])
@pytest.mark.parametrize(("mean", "scale"), [(0.0, 1.0), (0.0, 0.3), (1.0, 4.0)])
def test_mean_square_forward_gap_is_at_most_p_max_J(target, mean, scale):
    gaps = approx_theorem.mean_square_gaps(target, 2, mean, scale)
    assert gaps["E (h - h~)^2"] <= gaps["p_max J"]
    assert gaps["J by quadrature"] == pytest.approx(approx_theorem.primitive_table(target)["objective_value"],
                                                    rel=1e-6)


def test_J_does_not_bound_the_derivative_gap():
    gaps = approx_theorem.mean_square_gaps("gelu")
    assert gaps["E (h' - s)^2"] > gaps["p_max J"]


def test_forward_sup_gap_is_attained_at_zero_for_regelu2():
    # h(0) = 0 and h~(0) = -a_1 c_1 for the symmetric ReGELU2 table, which is the largest gap
    entry = approx_theorem.primitive_table("gelu")
    assert approx_theorem.forward_sup_gap("gelu") == pytest.approx(abs(entry["a"][0] * entry["c"][0]), rel=1e-6)


def test_step_function_jumps_by_a_across_one_ulp():
    np.testing.assert_allclose(approx_theorem.jumps_at_knots(), approx_theorem.primitive_table()["a"], rtol=1e-12)


@pytest.mark.parametrize("radius", [0.001, 0.05, 0.5])
def test_expected_step_change_bound(radius):
    worst, bound = approx_theorem.expected_step_change(radius)
    assert worst <= bound
    assert worst > bound / 2  # the bound without its factor 2 would fail: it is tight up to the outer knots


@pytest.mark.parametrize("weight_scale", [1.5, 0.1])
def test_one_layer_forward_and_gradient_gaps(weight_scale):
    gaps = approx_theorem.one_layer_gaps(weight_scale=weight_scale)
    for name, (measured, bound) in gaps.items():
        if not name.startswith("wrong"):
            assert measured <= bound, name
    if weight_scale < 1:  # pre-activations near 0, where |h - h~| = eps: J in place of eps is too small
        measured, wrong_bound = gaps["wrong: eps -> J"]
        assert measured > wrong_bound
