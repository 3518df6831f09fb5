"""The profiler's QLoRA block (tiny LLaMA, real NF4 tensors, bf16 autocast): what the gated MLP keeps after
``convert``, against the analytic minimum; with ``gated_dtype=torch.bfloat16`` the block is at the minimum."""

from __future__ import annotations

import pytest
import torch

from approxbp.conversion import convert
from approxbp.memory.analytic import block_needs, minimum_by_kind
from approxbp.memory.measurement import VARIANTS, block_shape, run_variant

pytest.importorskip("bitsandbytes")
INTERMEDIATE, TOKENS = 80, 2 * 12  # conftest's tiny LLaMA and batch


@pytest.fixture(scope="module")
def runs(tiny_setting):
    setting = tiny_setting("llama", "qlora", "bf16")
    config = setting.make_config()
    both = VARIANTS["both"]
    return {name: run_variant(setting, config, options, options and convert) for name, options in
            (("baseline", None), ("both", both), ("gated", {**both, "gated_dtype": torch.bfloat16}))}, config


def mlp_storages(run) -> list[tuple[torch.dtype, str]]:
    """(dtype, kind) of the middle block's storages as wide as the MLP (gate, up, the product), in saving order."""
    profile = run.profile
    block = profile.num_blocks // 2
    return [(s.dtype, s.kind) for s in profile.block_storages(block) if s.shape[-1:] == (INTERMEDIATE,)
            and s.nbytes in (TOKENS * INTERMEDIATE * 2, TOKENS * INTERMEDIATE * 4)]


def test_the_gated_mlp_keeps_fp32_gate_and_up_and_the_bf16_product(runs):
    """peft's recipe gives fp32 gate and up (kept by the gated op) and an fp32 product, of which the down
    projection's adapter keeps the bf16 copy its matmul reads."""
    runs, _ = runs
    assert mlp_storages(runs["both"]) == [(torch.float32, "activation")] * 2 + [(torch.bfloat16, "lora")]
    assert mlp_storages(runs["gated"]) == [(torch.bfloat16, "activation")] * 2 + [(torch.bfloat16, "linear")]


def test_with_gated_dtype_the_block_is_at_the_analytic_minimum(runs):
    runs, config = runs
    shape = block_shape(config, runs["baseline"].run_model, "bf16")  # read before conversion, as the profiler does
    minimum = sum(minimum_by_kind(block_needs(shape, 2, True)).values())
    block = runs["gated"].profile.num_blocks // 2
    kept = {name: sum(run.profile.bytes_by_kind(block).values()) / TOKENS for name, run in runs.items()}
    assert kept["gated"] == pytest.approx(minimum, abs=1e-9)
    assert kept["both"] - kept["gated"] == 2 * INTERMEDIATE * (4 - 2)  # gate and up in fp32
