"""The analytic minimum: hand-checked figures, and equality with what the ViT block keeps where HF's and
approxbp's ops keep nothing superfluous."""

from __future__ import annotations

import pytest

from approxbp.memory.analytic import BlockShape, block_needs, minimum_by_kind
from approxbp.memory.report import to_json

ALL_VIT = frozenset({"q", "k", "v", "o", "fc1", "fc2"})


def vit_b(keeps=ALL_VIT, ranks=()) -> BlockShape:
    return BlockShape("pre_ln", 768, 3072, 12, 12, 4, keeps, ranks)


def total(shape, approx_bits=None, ms=False) -> float:
    return sum(minimum_by_kind(block_needs(shape, approx_bits, ms)).values())


def test_vit_b_full_fp32_by_hand():
    d, m, e = 768, 3072, 4
    # inputs of LN1 and LN2, their outputs, q, k, v, attention output, fc1 output, GELU output; stats and lse
    baseline = (6 * d + 2 * m) * e + (2 * d) * e + 2 * 8 + 12 * 4
    assert total(vit_b()) == baseline
    assert total(vit_b(), approx_bits=2) == baseline - m * e + m * 2 / 8
    assert total(vit_b(), ms=True) == baseline - 2 * d * e - 2 * 4
    assert round(total(vit_b()) / (d * e), 1) == 16.0
    assert round(total(vit_b(), 2, True) / (d * e), 1) == 10.3


def test_ms_bp_gains_nothing_when_no_linear_reads_the_norm_output():
    frozen = vit_b(keeps=frozenset())
    assert total(frozen, ms=True) == total(frozen) - 2 * 4  # only LayerNorm's mean goes: the norm keeps y instead of x


def test_gated_mlp_minimum_is_the_same_with_approx_bp():
    llama = BlockShape("pre_rms", 4096, 11008, 32, 32, 2, frozenset({"q", "v"}), (("q", 64), ("v", 64)))
    assert total(llama, approx_bits=2) == total(llama)
    kinds = minimum_by_kind(block_needs(llama, None, False))
    assert kinds["lora"] == 2 * 64 * 2
    assert kinds["activation"] == 2 * 11008 * 2  # gate and up


@pytest.mark.parametrize("tuning", ["full", "frozen", "lora", "lora-fa"])
def test_vit_block_keeps_exactly_the_minimum(vit_runs, tiny_setting, tuning):
    """In fp32 HF ViT's and approxbp's ops (the packed LoRA path included) keep nothing beyond the minimum."""
    doc = to_json("tiny-vit", tiny_setting("vit", tuning), vit_runs[tuning])
    for name, variant in doc["variants"].items():
        analytic = variant["analytic"]["bytes_per_token"]
        measured = variant["block"]["bytes_per_token"]
        assert measured == pytest.approx(analytic), name

