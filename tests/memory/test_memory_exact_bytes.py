"""Exact bytes per op kind for the middle block of a tiny ViT in fp32 (d 32, MLP 64, 2 heads, 2 x 17 tokens),
against counts worked out by hand from what each op's backward reads."""

from __future__ import annotations

import pytest
import torch

from approxbp.memory.kinds import KINDS
from approxbp.memory.models import build, kernel_context
from approxbp.memory.profile import profile_saved
from approxbp.saved import record_saved

ROWS, D, M, HEADS, RANK, F32 = 2 * 17, 32, 64, 2, 4, 4
ACT = ROWS * D * F32  # one d-wide fp32 activation
WIDE = ROWS * M * F32  # one MLP-wide fp32 activation
STAT = ROWS * F32  # one fp32 per row (LayerNorm mean or rstd)
CODES = ROWS * M * 2 // 8  # 2-bit Approx-BP codes, packed
LSE = ROWS * HEADS * F32  # attention's log-sum-exp
LORA_OUT = ROWS * RANK * F32  # A's output, kept by B


def expected(tuning: str, variant: str) -> dict[str, int]:
    approx, ms = variant in ("approx", "both"), variant in ("ms", "both")
    activation = CODES if approx else WIDE  # GELU input, or its codes
    if tuning == "full":
        # q/k/v read LN1's output, o_proj the attention output (also kept by attention), fc1 LN2's output, fc2 GELU's
        linear, lora = 3 * ACT + WIDE, 0
        attention = 3 * ACT + LSE  # q, k, v, log-sum-exp; the output is charged to o_proj's input
        norm = 2 * STAT if ms else 2 * (ACT + 2 * STAT)  # MS: rstd only, y is o shared with the linears
    else:
        # LoRA on q and v (A reads LN1's output), or nothing trains: attention keeps its output itself
        linear = ACT if tuning == "lora" else 0
        lora = 2 * LORA_OUT if tuning.startswith("lora") else 0  # the packed LoRA path applies gamma to x itself
        attention = 4 * ACT + LSE
        shared_norm_outputs = 1 if tuning == "lora" else 0  # LN1's y is LoRA A's input; LN2's y nobody else keeps
        norm = (2 - shared_norm_outputs) * ACT + 2 * STAT if ms else 2 * (ACT + 2 * STAT)
    return {"linear": linear, "lora": lora, "activation": activation, "attention": attention, "norm": norm,
            "dropout": 0, "checkpoint": 0, "other": 0}


@pytest.mark.parametrize("tuning", ["full", "lora", "lora-fa", "frozen"])
@pytest.mark.parametrize("variant", ["baseline", "approx", "ms", "both"])
def test_middle_block_bytes_per_kind(vit_runs, tuning, variant):
    measurement = vit_runs[tuning]
    assert not measurement.unavailable
    assert measurement.profiles[variant].bytes_by_kind(1) == expected(tuning, variant)


def test_blocks_alike_except_the_shared_step_table(vit_runs):
    approx = vit_runs["full"].profiles["approx"]
    first, middle, last = (sum(approx.bytes_by_kind(i).values()) for i in range(3))
    assert middle == last
    assert first == middle + 8 * 7  # the fp64 table [3 thresholds, 4 levels], one storage for every layer


def test_outside_blocks(vit_runs):
    outside = vit_runs["full"].profiles["baseline"].bytes_by_kind(None)
    pixels = 2 * 3 * 16 * 16 * F32  # the patch embedding's input
    loss = 2 * 5 * F32 + 2 * 8 + F32  # log-softmax output, int64 targets, total weight
    assert outside == dict.fromkeys(KINDS, 0) | {"linear": pixels + ACT, "norm": ACT + 2 * STAT, "other": loss}


def test_shared_storage_counted_once_and_charged_to_linear(vit_runs):
    profile = vit_runs["full"].profiles["ms"]
    shared = [s for s in profile.block_storages(1) if s.kinds == ("linear", "norm")]
    assert [s.nbytes for s in shared] == [ACT, ACT]
    savers = shared[0].describe()
    assert savers[0].startswith("norm: ms_norm_fwd") and savers[0].endswith("in layernorm_before")
    assert {"linear: linear in attention.q_proj", "linear: linear in attention.v_proj"} <= set(savers)
    assert profile.shared == {"linear+attention": 3 * ACT, "linear+norm": 2 * 3 * ACT}
    assert profile.total == sum(profile.bytes_by_kind().values())


def test_total_agrees_with_record_saved(vit_config):
    """The attributing profiler and approxbp.saved.record_saved count the same bytes."""
    torch.manual_seed(0)
    model = build(vit_config(), "fp32", "gpu")
    pixels = torch.randn(2, 3, 16, 16)
    with kernel_context("gpu"), record_saved(model) as saved:
        model(pixel_values=pixels).logits.sum()
    with kernel_context("gpu"), profile_saved(model) as profile:
        model(pixel_values=pixels).logits.sum()
    assert profile.total == saved.bytes > 0
