"""The packed LoRA path over bitsandbytes NF4 bases (QLoRA on CPU): the same step as peft, fewer saved bytes."""

import copy
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("bitsandbytes")
sys.path.insert(0, str(Path(__file__).parents[1] / "qlora"))
from qlora_models import load_quantized, qlora, run, save_tiny_llama

from approxbp.conversion import convert
from approxbp.modules.lora import LoraForward4bit
from approxbp.saved import record_saved


def saved_bytes(model) -> int:
    torch.manual_seed(5)
    with record_saved(model) as saved:
        run(model)
    return saved.bytes


def test_qlora_packed_path_is_pefts_step(tmp_path):
    save_tiny_llama(tmp_path)
    model = qlora(load_quantized(tmp_path), dropout=0.1)
    packed, unpacked = copy.deepcopy(model), copy.deepcopy(model)
    report = convert(packed, approx=None)
    convert(unpacked, approx=None, lora=None, dropout=None)
    assert sum(c.kind == "lora" for c in report.packed) == 2 * 7
    assert sum(isinstance(m.__dict__.get("forward"), LoraForward4bit) for m in packed.modules()) == 2 * 7
    results = [(run(m), torch.rand(4)) for m in (model, unpacked, packed)]
    for (got, rng), (expected, rng0), tolerance in ((results[2], results[1], 1e-6), (results[2], results[0], 2e-3)):
        (loss, _, grads), (loss0, _, grads0) = got, expected  # vs peft: MS-RMSNorm's bf16 rounding, packed or not
        assert torch.equal(rng, rng0)
        assert torch.allclose(loss, loss0, rtol=tolerance)
        assert grads.keys() == grads0.keys()
        assert max(((grads[k] - grads0[k]).norm() / grads0[k].norm()).item() for k in grads0) <= tolerance
    assert saved_bytes(packed) < saved_bytes(unpacked)
