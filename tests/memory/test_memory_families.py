"""What the tuning modes and conversions change in LLaMA and RoBERTa blocks (real runs of tiny models)."""

from __future__ import annotations

import pytest

from approxbp.memory.measurement import measure

ROWS = 2 * 12


@pytest.mark.parametrize("family", ["llama", "roberta"])
def test_frozen_and_lora_fa_keep_no_linear_input(tiny_setting, family):
    for tuning in ("frozen", "lora-fa"):
        profile = measure(tiny_setting(family, tuning)).profiles["baseline"]
        for block in range(profile.num_blocks):
            kept = profile.bytes_by_kind(block)
            assert kept["linear"] == 0, (tuning, block)
            assert (kept["lora"] > 0) == (tuning == "lora-fa")


def test_llama_gated_mlp(tiny_setting):
    """HF's act(gate) * up keeps gate, act(gate) and up; the fused ApproxSwiGLU keeps gate and up; the down
    projection keeps the product (a linear input) in full tuning."""
    measurement = measure(tiny_setting("llama", "full"))
    wide = ROWS * 80 * 4
    assert measurement.profiles["baseline"].bytes_by_kind(1)["activation"] == 3 * wide
    assert measurement.profiles["approx"].bytes_by_kind(1)["activation"] == 2 * wide
    gated = [s for s in measurement.profiles["approx"].block_storages(1) if s.kind == "activation"]
    assert all(s.describe() == ["activation: gated_fwd.default in mlp.act_fn"] for s in gated), gated


def test_llama_lora_dropout_copies_and_masks(tiny_setting):
    """peft's LoRA dropout: every adapter keeps its own dropped copy of the input (a LoRA intermediate) and a bool
    mask (GPU-like kernels), none of which the analytic minimum has."""
    profile = measure(tiny_setting("llama", "lora")).profiles["baseline"]
    d, m = 32, 80
    inputs = 3 * d + d + 2 * d + m  # q, k, v, o, gate, up, down
    kept = profile.bytes_by_kind(1)
    assert kept["dropout"] == ROWS * inputs  # one byte per element
    assert kept["lora"] == ROWS * inputs * 4 + 7 * ROWS * 4 * 4  # fp32 copies, and A's rank-4 outputs
    assert kept["linear"] == 0  # base weights frozen; the A layers read the dropped copies


def test_roberta_post_ln_output_saving_norm(tiny_setting):
    """MSLayerNormAffine keeps its output z: the second norm's z is the next block's input, which its LoRA'd query
    and key keep anyway (shared, charged to the next block's linear inputs); the first norm's z only the norm keeps
    (its reader, the intermediate dense, is frozen)."""
    measurement = measure(tiny_setting("roberta", "lora"))
    act, stat = ROWS * 32 * 4, ROWS * 4
    assert measurement.profiles["baseline"].bytes_by_kind(1)["norm"] == 2 * (act + 2 * stat)
    assert measurement.profiles["ms"].bytes_by_kind(1)["norm"] == act + 2 * stat
    assert measurement.profiles["ms"].shared == {"linear+norm": 2 * act}  # blocks 0 and 1 feed blocks 1 and 2
