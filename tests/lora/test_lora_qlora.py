"""The packed LoRA path over bitsandbytes NF4 bases (QLoRA on CPU): the same step as peft, fewer saved bytes."""

import copy
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("bitsandbytes")
sys.path.insert(0, str(Path(__file__).parents[1] / "qlora"))
from qlora_models import load_quantized, qlora, relative, run, save_tiny_llama

from approxbp.conversion import convert
from approxbp.conversion.lora_path import install
from approxbp.modules.lora import LoraForward4bit
from approxbp.saved import record_saved


def saved_bytes(model) -> int:
    torch.manual_seed(5)
    with record_saved(model) as saved:
        run(model)
    return saved.bytes


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_llama(path)
    return path


def test_qlora_packed_path_is_pefts_step(folder):
    model = qlora(load_quantized(folder), dropout=0.1)
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
        assert max(relative(grads[k], grads0[k]) for k in grads0) <= tolerance
    assert saved_bytes(packed) < saved_bytes(unpacked)


def test_qlora_packed_path_under_cpu_autocast(folder):
    """Under CPU bf16 autocast (HF Trainer's bf16=True) peft still casts x to A's dtype (its test is CUDA's
    ``torch.is_autocast_enabled()``), A's and B's matmuls run in bf16: the packed path alone is peft's step to
    float rounding, with MS-BP it is the unpacked conversion's, in fewer bytes."""
    model = qlora(load_quantized(folder), dropout=0.1)
    alone, packed, unpacked = (copy.deepcopy(model) for _ in range(3))
    layers = [m for m in alone.modules() if type(m).__name__ == "Linear4bit" and hasattr(m, "lora_A")]
    install([(m, LoraForward4bit) for m in layers])
    convert(packed, approx=None)
    convert(unpacked, approx=None, lora=None, dropout=None)
    results = []
    for m in (model, alone, unpacked, packed):
        with torch.autocast("cpu", dtype=torch.bfloat16), record_saved(m) as saved:
            results.append((run(m), torch.rand(4), saved.bytes))
    for (got, rng, saved), (expected, rng0, saved0) in ((results[1], results[0]), (results[3], results[2])):
        (loss, _, grads), (loss0, _, grads0) = got, expected
        assert torch.equal(rng, rng0) and saved < saved0
        assert torch.allclose(loss, loss0, rtol=1e-5)
        assert {k: g.dtype for k, g in grads.items()} == {k: g.dtype for k, g in grads0.items()}
        assert max(relative(grads[k], grads0[k]) for k in grads0) <= 2.0**-8
