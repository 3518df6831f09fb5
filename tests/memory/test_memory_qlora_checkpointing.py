"""QLoRA (``--tuning qlora``: NF4 blocks) and activation checkpointing (``--checkpointing``) in the profiler, and the
1-bit dropout masks of the analytic minimum."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_memory_fake_vs_real import signature

from approxbp.memory.analytic import BlockShape, block_needs, minimum_by_kind
from approxbp.memory.measurement import measure
from approxbp.memory.report import to_json

pytest.importorskip("bitsandbytes")
D, INTERMEDIATE, SEQ, BATCH = 32, 80, 12, 2  # conftest's tiny LLaMA


@pytest.fixture(scope="module")
def qlora_runs(tiny_setting):
    setting = tiny_setting("llama", "qlora", "bf16")
    return setting, measure(setting), measure(replace(setting, fake=True))


def test_qlora_fake_run_saves_what_a_real_run_saves(qlora_runs):
    _, real, fake = qlora_runs
    assert not real.unavailable and set(real.profiles) == {"baseline", "approx", "ms", "both"}
    for variant in real.profiles:
        assert signature(fake.profiles[variant]) == signature(real.profiles[variant]), variant


def test_qlora_base_layers_keep_nothing_and_ms_bp_converts_their_norms(qlora_runs):
    setting, real, _ = qlora_runs
    savers = [saver for s in real.profiles["baseline"].storages for saver in s.describe()]
    assert savers and not any(saver.endswith("base_layer") for saver in savers)
    assert "gamma applied on the input of 4-bit readers" in real.conversions["ms"]
    doc = to_json("tiny-llama", setting, real)
    assert doc["setting"]["lora"]["rank"] == setting.lora.rank
    norm = {v: doc["variants"][v]["block"]["bytes"]["norm"] for v in ("baseline", "ms")}
    assert norm["ms"] < norm["baseline"]


def test_checkpointing_keeps_each_block_input_and_states_the_recompute_peak(tiny_setting):
    setting = tiny_setting("llama", "lora", checkpointing=True)
    measurement = measure(setting)
    assert set(measurement.profiles) == {"baseline", "approx", "ms", "both", "ckpt", "both+ckpt"}
    doc = to_json("tiny-llama", setting, measurement)
    hidden_states = BATCH * SEQ * D * 4
    for name, unchecked in (("ckpt", "baseline"), ("both+ckpt", "both")):
        variant = doc["variants"][name]
        assert variant["checkpointing"] and variant["analytic"] is None
        assert variant["block"]["bytes"] == {k: (hidden_states if k == "checkpoint" else 0) for k in doc["kinds"]}
        assert variant["recompute_peak"]["total"] == hidden_states + doc["variants"][unchecked]["block"]["total"]
    assert doc["variants"]["baseline"]["recompute_peak"] is None


def test_analytic_minimum_counts_one_bit_per_dropout_element():
    roles = frozenset({"q", "k", "v", "o", "gate", "up", "down"})
    masks = tuple((f"{r} LoRA default", INTERMEDIATE if r == "down" else D) for r in sorted(roles))
    shape = BlockShape("pre_rms", D, INTERMEDIATE, 4, 2, 2, roles, tuple((r, 4) for r in roles), masks)
    without = replace(shape, masks=())
    kinds, kinds_without = (minimum_by_kind(block_needs(s, None, True)) for s in (shape, without))
    assert kinds["lora"] - kinds_without["lora"] == (6 * D + INTERMEDIATE) / 8  # read by the adapters' backward
    assert {k: v for k, v in kinds.items() if k != "lora"} == {k: v for k, v in kinds_without.items() if k != "lora"}
    hidden = replace(without, layout="pre_ln", masks=(("output.dropout", D),))
    assert minimum_by_kind(block_needs(hidden, None, True))["dropout"] == D / 8


def test_profiled_minimum_reads_the_dropouts_of_the_model(tiny_setting):
    llama = measure(tiny_setting("llama", "lora"))  # LoRA dropout 0.1 on all seven linears
    assert dict(llama.shape.masks) == {f"{r} LoRA default": INTERMEDIATE if r == "down" else D
                                       for r in ("q", "k", "v", "o", "gate", "up", "down")}
    roberta = measure(tiny_setting("roberta", "full"))  # hidden dropout 0.1 after attention and after the MLP
    assert roberta.shape.masks == (("attention.output.dropout", D), ("output.dropout", D))
