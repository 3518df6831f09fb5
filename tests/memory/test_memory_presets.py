"""Paper-scale presets run in seconds on CPU (fake tensors) and reproduce the counted ViT-B block (16.0 -> 10.3 d)."""

from __future__ import annotations

import time

import pytest

from approxbp.memory.cli import parser, setting_from_args
from approxbp.memory.measurement import measure
from approxbp.memory.report import to_json


def preset_doc(*argv: str) -> tuple[dict, float]:
    name, setting = setting_from_args(parser().parse_args(list(argv)))
    start = time.perf_counter()
    doc = to_json(name, setting, measure(setting))
    return doc, time.perf_counter() - start


def block_d(doc: dict, variant: str) -> float:
    return doc["variants"][variant]["block"]["total_d_per_token"]


def test_vit_b_full_fp32_block_is_16_d_and_10_3_d_with_both():
    doc, seconds = preset_doc("--model", "vit-b", "--dtype", "fp32")
    assert seconds < 60
    assert (doc["setting"]["batch"], doc["setting"]["seq"], doc["model"]["blocks"]) == (64, 197, 12)
    assert round(block_d(doc, "baseline"), 1) == 16.0
    assert round(block_d(doc, "both"), 1) == 10.3
    for variant in doc["variants"].values():
        assert variant["block"]["total_d_per_token"] == pytest.approx(variant["analytic"]["total_d_per_token"])


def test_llama_7b_block_in_seconds():
    doc, seconds = preset_doc("--model", "llama-7b", "--layers", "2")
    assert seconds < 60
    assert (doc["setting"]["tokens"], doc["model"]["hidden"], doc["setting"]["tuning"]) == (4 * 640, 4096, "lora")
    assert block_d(doc, "both") < block_d(doc, "approx") < block_d(doc, "baseline")
    assert block_d(doc, "both") < block_d(doc, "ms") < block_d(doc, "baseline")

