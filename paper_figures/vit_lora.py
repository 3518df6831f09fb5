"""Figure 4: the paper's Figure 1 setting, ViT-B/16 with LoRA rank 4 ("all" linears), batch 64: activation memory and
throughput of LoRA, LoRA + activation checkpointing on every block, LoRA + Approx-BP + MS-BP, and both combined.

Memory: the profiler with checkpointing as a peer, the numbers of ``python -m approxbp.memory --model vit-b --tuning
lora --checkpointing`` (bf16, fake tensors: nothing allocated): what autograd keeps after the forward pass
(saved-tensor hooks, unique storages, parameters excluded), the whole model, for its baseline (LoRA), ckpt, both and
both+ckpt variants; checkpointing is HF's ``activation_checkpointing_enable()`` (non-reentrant
``torch.utils.checkpoint``) on every block, which then keeps each block's input.  The backward recomputes one block
at a time, so its peak adds one block's activations: drawn hatched, what the middle block of the same model without
checkpointing keeps (the profiler's recompute peak less the block's kept input; an upper bound: that input, already
kept, is counted again where the recomputed block saves it).

Throughput: no GPU results exist, so it is a CPU measurement of a reduced ViT of the same structure (forward and
backward of a LoRA training step on one thread, median over timed steps after warm-up, variants interleaved).  The
Approx-BP and MS-BP ops run their pure-PyTorch CPU reference there, not the GPU Triton kernels, so it says nothing
of GPU speed.
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt

from paper_figures.base import Drawing

NAME = "vit_lora"
TITLE = "ViT-B LoRA r4, batch 64 (the paper's Figure 1): activation memory and throughput with checkpointing, " \
        "Approx-BP + MS-BP, both"
INPUTS = ()
BOTH = {"approx": "auto", "norms": "ms"}


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    ours: bool  # Approx-BP + MS-BP (approxbp.convert)
    checkpointing: bool  # HF gradient checkpointing on every block
    profiler: str  # the approxbp.memory variant measuring it


VARIANTS = (Variant("lora", "LoRA", False, False, "baseline"),
            Variant("lora+checkpointing", "LoRA +\ncheckpointing", False, True, "ckpt"),
            Variant("lora+approx-bp+ms-bp", "LoRA +\nApprox-BP + MS-BP", True, False, "both"),
            Variant("lora+approx-bp+ms-bp+checkpointing", "LoRA + checkpointing\n+ Approx-BP + MS-BP", True, True,
                    "both+ckpt"))


@dataclass(frozen=True)
class Scale:
    memory_layers: int | None  # blocks built for the memory count (None: all 12)
    memory_batch: int
    hidden: int  # the reduced ViT of the CPU timing
    layers: int
    heads: int
    image: int
    patch: int
    batch: int
    warmup: int
    steps: int


SCALES = {False: Scale(None, 64, 192, 6, 3, 96, 8, 16, 3, 21), True: Scale(3, 8, 64, 2, 2, 32, 8, 4, 1, 4)}


def prepare(model, variant: Variant):
    """Convert (Approx-BP + MS-BP) and switch checkpointing on, as a variant asks; returns the conversion report."""
    import approxbp

    report = approxbp.convert(model, **BOTH) if variant.ours else None
    if variant.checkpointing:
        model.activation_checkpointing_enable()
    return report


def memory(scale: Scale) -> dict:
    """Activation bytes kept after the forward pass at the paper's setting, per variant (``approxbp.memory``)."""
    from approxbp.memory.measurement import Setting, measure
    from approxbp.memory.presets import PRESETS
    from approxbp.memory.report import to_json

    p = PRESETS["vit-b"]
    setting = Setting(p.config, scale.memory_batch, p.seq, "bf16", "lora", p.lora, layers=scale.memory_layers,
                      checkpointing=True)
    doc = to_json("vit-b", setting, measure(setting))
    profiled = {v.key: doc["variants"][v.profiler] for v in VARIANTS}
    return {"setting": {"model": "vit-b (ViTForImageClassification, 100 classes)", "blocks": doc["model"]["blocks"],
                        "batch": setting.batch, "seq": setting.seq, "dtype": setting.dtype, "tuning": "lora",
                        "lora_rank": p.lora.rank, "lora_targets": list(p.lora.targets)},
            "profiler_variants": {v.key: v.profiler for v in VARIANTS},
            "kept_after_forward_bytes": {k: e["model"]["total"] for k, e in profiled.items()},
            "middle_block_bytes": {k: e["block"]["total"] for k, e in profiled.items()},
            "recomputed_block_bytes": {k: e["recompute_peak"]["total"] - e["block"]["total"] if e["recompute_peak"]
                                       else 0 for k, e in profiled.items()}}


def throughput(scale: Scale) -> dict:
    """Images per second of forward + backward on this CPU, reduced ViT, median over interleaved timed steps."""
    import torch

    from approxbp.memory.models import apply_tuning, build, make_batch
    from approxbp.memory.presets import PRESETS

    p = PRESETS["vit-b"]
    config = copy.deepcopy(p.config())
    config.hidden_size, config.num_hidden_layers, config.num_attention_heads = scale.hidden, scale.layers, scale.heads
    config.intermediate_size, config.image_size, config.patch_size = 4 * scale.hidden, scale.image, scale.patch
    runs = {}
    for v in VARIANTS:
        model = build(copy.deepcopy(config), "fp32", "cpu")
        run_model = apply_tuning(model, "lora", p.lora)
        prepare(run_model, v)
        runs[v.key] = (run_model, make_batch(model, scale.batch, 0, "fp32"))
    times = {key: [] for key in runs}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared machine, threads waiting for each other would dominate the timing
    try:
        for step in range(scale.warmup + scale.steps):
            for key, (run_model, batch) in runs.items():
                start = time.perf_counter()
                run_model(**batch).loss.backward()
                if step >= scale.warmup:
                    times[key].append(time.perf_counter() - start)
                trained = [q for q in run_model.parameters() if q.requires_grad]
                if any(q.grad is None for q in trained):
                    raise RuntimeError(f"{key}: a trainable parameter got no gradient")
                for q in trained:
                    q.grad = None
    finally:
        torch.set_num_threads(threads)
    tokens = (scale.image // scale.patch) ** 2 + 1
    return {"setting": {"model": f"reduced ViT ({scale.layers} blocks, d = {scale.hidden}, {tokens} tokens, fp32, "
                                 f"LoRA r{p.lora.rank})",
                        "batch": scale.batch, "warmup_steps": scale.warmup, "timed_steps": scale.steps,
                        "threads": 1, "cpu": platform.processor() or platform.machine(),
                        "step": "forward + loss + backward (no optimizer step)"},
            "step_seconds": times,
            "images_per_second": {key: scale.batch / statistics.median(t) for key, t in times.items()}}


def draw(mem: dict, speed: dict):
    fig, (ax_mem, ax_speed) = plt.subplots(1, 2, figsize=(14, 5.6))
    labels, keys = [v.label for v in VARIANTS], [v.key for v in VARIANTS]
    mib = 2**20
    kept = [mem["kept_after_forward_bytes"][k] / mib for k in keys]
    extra = [mem["recomputed_block_bytes"][k] / mib for k in keys]
    colors = ["C0", "C1", "C2", "C3"]
    ax_mem.bar(labels, kept, color=colors, label="kept by autograd after the forward pass")
    ax_mem.bar(labels, extra, bottom=kept, color="none", edgecolor="grey", hatch="//",
               label="+ one block recomputed in the backward (peak)")
    for x, (k, e) in enumerate(zip(kept, extra, strict=True)):
        ax_mem.annotate(f"{k:,.0f}" + (f"\n(+{e:,.0f})" if e else ""), (x, k + e), ha="center", va="bottom", fontsize=8)
    s = mem["setting"]
    ax_mem.set(ylabel="activation memory (MiB)", ylim=(0, 1.18 * max(k + e for k, e in zip(kept, extra, strict=True))),
               title=f"ViT-B/16, LoRA r{s['lora_rank']}, batch {s['batch']} x {s['seq']} tokens, {s['dtype']}, "
                     f"{s['blocks']} blocks\nactivation memory of the whole model (approxbp.memory, fake tensors)\n"
                     "weights, gradients and optimizer state excluded")
    ax_mem.legend(fontsize=8, loc="upper right")
    steps = [speed["step_seconds"][k] for k in keys]
    batch = speed["setting"]["batch"]
    rates = [speed["images_per_second"][k] for k in keys]
    quartiles = [statistics.quantiles(t, n=4) for t in steps]  # error bars: the step times' interquartile range
    low = [r - batch / q[2] for r, q in zip(rates, quartiles, strict=True)]
    high = [batch / q[0] - r for r, q in zip(rates, quartiles, strict=True)]
    ax_speed.bar(labels, rates, color=colors, yerr=[low, high], capsize=4)
    for x, r in enumerate(rates):
        ax_speed.annotate(f"{r:,.1f}", (x, r), ha="center", va="bottom", fontsize=8, xytext=(12, 2),
                          textcoords="offset points")
    ss = speed["setting"]
    ax_speed.set(ylabel="images / s (median step; bars: interquartile range)",
                 title=f"CPU throughput, NOT the paper's GPU setting:\n{ss['model']}, batch {ss['batch']}\n1 thread, "
                       f"{ss['timed_steps']} timed steps of forward + backward\n(Approx-BP and MS-BP run their "
                       "pure-PyTorch CPU reference, not the GPU kernels)")
    for ax in (ax_mem, ax_speed):
        ax.tick_params(axis="x", labelsize=8)
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def make(quick: bool) -> Drawing:
    scale = SCALES[quick]
    mem, speed = memory(scale), throughput(scale)
    data = {"how": __doc__.split("\n\n", 1)[1].replace("\n", " "), "memory": mem, "throughput": speed}
    return Drawing(draw(mem, speed), data)
