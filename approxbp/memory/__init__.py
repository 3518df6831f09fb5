"""Activation-memory profiler: ``python -m approxbp.memory --model vit-b --tuning lora --batch 64 --seq 197``.

Counts the bytes autograd keeps for backward (saved-tensor hooks, unique storages, parameters and buffers excluded)
per transformer block and for the whole model (forward and loss), broken down by op kind, for the baseline and the
models ``approxbp.convert`` makes with Approx-BP only, MS-BP only and both; beside the analytic minimum of a block
(``analytic``).  Paper-scale models run under FakeTensorMode on CPU semantics, so nothing is allocated (``fake``);
``--real`` runs real CPU tensors, which save exactly the same (checked by the tests).  Attribution of a saved tensor
to a block and an op kind: ``profile``; the kinds and their priority for shared storages: ``kinds``; presets for
the paper's models and settings: ``presets``; GPU-like kernels: ``models``.

Python API: ``measure(Setting(...))`` -> ``Measurement``; ``to_json(name, setting, measurement)`` -> the document
below; ``render(document)`` -> the text table.

JSON document (``--json``; schema "approxbp.memory/1"; bytes are ints, per-token figures floats, d = hidden size
in activation elements, the block is the middle one, index ``block_index``):

    schema        "approxbp.memory/1"
    model         name, class, model_type, blocks, hidden, intermediate, heads, kv_heads
    setting       tuning, batch, seq, tokens (batch * seq), dtype, element_bytes, kernels ("gpu"|"cpu"), fake,
                  checkpointing, lora (rank, alpha, dropout, targets; null unless tuning is lora, lora-fa or qlora)
    kinds         ["linear", "lora", "activation", "attention", "norm", "dropout", "checkpoint", "other"]
    block_index   the block the "block" entries describe
    variants      {"baseline" | "approx" | "ms" | "both" [| "ckpt" | "both+ckpt" with checkpointing]: {
                    convert         the approxbp.convert options (null for the baseline and ckpt)
                    checkpointing   whether every block runs under activation checkpointing (kind "checkpoint":
                                    the inputs each checkpoint keeps)
                    conversion      approxbp.convert's report (null for the baseline)
                    block           bytes {kind: int}, total, bytes_per_token {kind: float},
                                    d_per_token {kind: float}, total_d_per_token
                    blocks_total    [bytes of every block]
                    outside_blocks  bytes {kind: int}, total (embeddings, final norm, head, loss)
                    model           bytes {kind: int}, total
                    shared          {"kind+kind": bytes} storages kept by ops of several kinds (charged to the first)
                    reduction_pct   block, model: percent change against the baseline
                    recompute_peak  checkpointed variants: total, total_d_per_token of the middle block while its
                                    backward recomputes it (its kept inputs plus what the unchecked variant's
                                    block saves); null otherwise
                    analytic        null for families without a model and checkpointed variants, else
                                    bytes_per_token {kind}, d_per_token {kind}, total_bytes_per_token,
                                    total_d_per_token, tensors [{name, bytes_per_token, kind}]
                    storages        the block's storages: kind, bytes, bytes_per_token, d_per_token, dtype, shape,
                                    savers ["kind: function in module", ...]}}
    unavailable   {variant: why it was not measured}
"""

from importlib import import_module

# imported on first use: the profiler needs transformers (and peft for LoRA), the `models` extra
_EXPORTS = {"Measurement": "measurement", "Setting": "measurement", "measure": "measurement", "to_json": "report",
            "render": "table"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'approxbp.memory' has no attribute {name!r}")
    return getattr(import_module(f"approxbp.memory.{_EXPORTS[name]}"), name)
