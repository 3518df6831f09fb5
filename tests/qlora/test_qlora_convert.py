"""QLoRA (bitsandbytes NF4 on CPU, peft's recipe): ``convert`` makes the pre-norms MS-RMSNorms over the 4-bit readers
without touching their weights; same loss, same gradients, less saved memory, merge/revert as peft's.  And the other
route: ``fold_norms_for_quantization`` before quantizing."""

import copy

import pytest
import torch
from qlora_models import batch, load_quantized, qlora, relative, run, save_tiny_llama

from approxbp.conversion import convert, revert
from approxbp.conversion.quantized import ScaledInput4bit, fold_norms_for_quantization
from approxbp.modules.ms_norm import MSRMSNorm
from approxbp.saved import record_saved

pytest.importorskip("bitsandbytes")
LAYERS, NORMS = 2, 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_llama(path)
    return path


def pair(folder, dropout: float, compute_dtype=torch.bfloat16, targets=None):
    """(QLoRA model, the same model converted with MS-BP alone)."""
    extra = {} if targets is None else {"targets": targets}
    original = qlora(load_quantized(folder, compute_dtype), dropout, **extra)
    converted = qlora(load_quantized(folder, compute_dtype), dropout, **extra)
    report = convert(converted, approx=None)
    return original, converted, report


def saved_bytes(model) -> int:
    ids = batch()
    with record_saved(model) as record:
        model(input_ids=ids, labels=ids)
    return record.bytes


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_norms_over_4bit_readers_become_ms_norms_with_the_same_loss_and_gradients(folder, dropout):
    original, converted, report = pair(folder, dropout, torch.float32)
    folded = [c for c in report.changes if c.kind == "folded-norm"]
    assert len(folded) == LAYERS * NORMS and all("4-bit readers (not folded)" in c.after for c in folded)
    layer = converted.base_model.model.model.layers[0]
    assert isinstance(layer.input_layernorm, MSRMSNorm)
    assert isinstance(layer.self_attn.q_proj.base_layer, ScaledInput4bit)
    loss, logits, grads = run(original)
    loss_c, logits_c, grads_c = run(converted)
    assert abs(loss_c.item() - loss.item()) <= 1e-6 * loss.item()
    assert relative(logits_c, logits) < 1e-6
    assert grads.keys() == grads_c.keys() and len(grads) == LAYERS * 7 * 2
    assert max(relative(grads_c[k], grads[k]) for k in grads) < 1e-5


def test_bf16_compute_with_dropout_gives_the_same_loss(folder):
    """The 4-bit matmul sees the original input gamma * y (up to the fp32 rounding of y), LoRA dropout the same
    masks; gradients differ by the bf16 rounding of the backward matmuls."""
    original, converted, _ = pair(folder, 0.1)
    loss, logits, grads = run(original)
    loss_c, logits_c, grads_c = run(converted)
    assert abs(loss_c.item() - loss.item()) <= 1e-6 * loss.item()
    assert relative(logits_c, logits) < 1e-6
    assert max(relative(grads_c[k], grads[k]) for k in grads) < 5e-3


def test_the_4bit_base_keeps_nothing_and_the_block_saves_less(folder):
    original, converted, _ = pair(folder, 0.0, torch.float32)
    base = converted.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    y = torch.randn(2, 12, 64, requires_grad=True)
    with record_saved(converted) as record:
        base(y)
    assert record.bytes == 0
    tokens, d, rank, adapters = batch().numel(), 64, 8, 5  # adapters reading a norm per block: q, k, v, gate, up
    # per norm, the HF RMSNorm's fp32 input x and output z (read by the adapters) become y, kept by the MS norm and
    # the adapters; with peft's adapters each builds A diag(gamma) (r x d fp32, AffineInputLinear), the packed LoRA
    # path saves more (no dropped copies, no A diag(gamma))
    saved = LAYERS * NORMS * tokens * d * 4 - LAYERS * adapters * rank * d * 4
    assert saved_bytes(original) - saved_bytes(converted) >= saved


def test_merge_unmerge_and_revert_are_peft_s(folder):
    original, converted, _ = pair(folder, 0.0)
    ids = batch()
    original.eval(), converted.eval()
    with torch.no_grad():  # both run first: in eval, bitsandbytes may repack the CPU weights at the first forward
        unmerged = converted(input_ids=ids).logits
        assert relative(unmerged, original(input_ids=ids).logits) < 1e-2  # bf16 compute of y's rounding
        for model in (original, converted):
            model.base_model.merge_adapter()
        merged, merged_c = original(input_ids=ids).logits, converted(input_ids=ids).logits
        assert torch.equal(merged_c, merged)  # the same requantized W + s B A, read by the same input gamma * y
        converted.base_model.unmerge_adapter()
        original.base_model.unmerge_adapter()  # peft's 4-bit unmerge requantizes: compare with the original's
        assert relative(converted(input_ids=ids).logits, original(input_ids=ids).logits) < 1e-3
        revert(converted)
        assert torch.equal(converted(input_ids=ids).logits, original(input_ids=ids).logits)
    layer = converted.base_model.model.model.layers[0]
    assert type(layer.self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    assert type(layer.input_layernorm).__name__ == "LlamaRMSNorm"


def test_state_dict_keys_lose_only_the_norms(folder):
    original, converted, _ = pair(folder, 0.1)
    lost = set(original.state_dict()) - set(converted.state_dict())
    assert lost and all(k.endswith("layernorm.weight") for k in lost)
    assert set(converted.state_dict()) <= set(original.state_dict())


def test_plain_4bit_readers_and_late_adapters(folder):
    """k_proj/up_proj without adapters are converted too; an adapter added to them afterwards is refused."""
    original, converted, _ = pair(folder, 0.0, torch.float32, targets=("q_proj", "v_proj", "gate_proj"))
    k_proj = converted.base_model.model.model.layers[0].self_attn.k_proj
    assert isinstance(k_proj, ScaledInput4bit)
    assert relative(run(converted)[1], run(original)[1]) < 1e-6
    from peft import LoraConfig

    converted.add_adapter("late", LoraConfig(r=2, target_modules=["k_proj"]))
    with pytest.raises(RuntimeError, match=r"added after approxbp\.convert"):
        converted(input_ids=batch())


def test_trainable_gamma_over_4bit_readers_is_left_alone(folder):
    model = qlora(load_quantized(folder), 0.0)
    model.base_model.model.model.layers[0].input_layernorm.weight.requires_grad_(True)
    report = convert(model, approx=None)
    skipped = {s.name.rsplit(".", 1)[-1]: s.reason for s in report.skipped if "layers.0." in s.name}
    assert "trainable gamma" in skipped["input_layernorm"]


def test_fold_norms_before_quantization(folder, tmp_path):
    """Folding then quantizing: the same function before quantization; after it, gamma = 1 applied on the fly (no
    memory saved over applying the real gamma: neither keeps anything), and NF4 weights of W diag(gamma) instead of
    W, which moves the loss by about the quantization error itself."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder)
    reference = copy.deepcopy(model)
    names = fold_norms_for_quantization(model)
    assert len(names) == LAYERS * NORMS
    assert all(bool((m.weight == 1).all()) for n, m in model.named_modules() if n.endswith("layernorm"))
    ids = batch()
    with torch.no_grad():
        assert relative(model(input_ids=ids).logits, reference(input_ids=ids).logits) < 1e-5
    model.save_pretrained(tmp_path)
    folded, unfolded = qlora(load_quantized(tmp_path), 0.0), qlora(load_quantized(folder), 0.0)
    for m in (folded, unfolded):
        convert(m, approx=None)
    assert saved_bytes(folded) == saved_bytes(unfolded)
    loss, loss_folded = run(unfolded)[0], run(folded)[0]
    assert loss_folded != loss and abs(loss_folded - loss) < 0.05 * loss
