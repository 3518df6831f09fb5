"""Training suite: memory and throughput of a fine-tuning step in six variants, beside the profiler's prediction.

Variants: baseline, Approx-BP, MS-BP, both (``approxbp.convert`` with the options of
``approxbp.memory.measurement.VARIANTS``), activation checkpointing (HF ``gradient_checkpointing_enable``,
non-reentrant, every block) and both + checkpointing.  Settings (the paper's, see ``approxbp.memory.presets``):
ViT-B/16 at batch 64, 224 px, fp32 weights under bf16 autocast, full tuning and LoRA r4; a LLaMA-7B-shaped decoder
in bf16 with LoRA r64 (dropout 0.1), batch 4 x 640 tokens, as many full-size blocks as fit; RoBERTa-base in fp32,
LoRA r64, batch 32 x 256 tokens.  ``quick``: the same models shrunk to a few seconds on CPU.

A step is forward + loss + backward + AdamW step.  Throughput: median of timed steps after warm-up steps.  Memory:
on CUDA the peak ``torch.cuda.max_memory_allocated`` over the timed steps (weights, gradients, optimizer state and
activations); on CPU, which has no allocator peak, the bytes autograd saves during one step's forward
(``approxbp.saved.record_saved``, unique storages, parameters excluded).  Prediction: ``approxbp.memory.measure``
(fake tensors, GPU kernels: activation bytes kept after the forward, whole model, in the setting's dtype; the
profiler has no autocast, so ViT is predicted in pure bf16).  Checkpointed variants get a prediction only where the
profiler's ``Setting`` has a ``checkpointing`` option.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from benchmarks.timing import time_call

QUICK_SHAPES = {  # config overrides of the quick (CPU seconds) models
    "vit": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256},
    "llama": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
              "intermediate_size": 172, "vocab_size": 512},
    "roberta": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
                "vocab_size": 512},
}
QUICK_LORA_RANK = 8
VARIANT_NAMES = ("baseline", "approx", "ms", "both", "checkpointing", "both+checkpointing")


@dataclass(frozen=True)
class TrainSetting:
    name: str
    preset: str  # approxbp.memory.presets.PRESETS key
    tuning: str  # "full" or "lora" (the preset's LoRA spec)
    batch: int
    seq: int
    dtype: str  # the weights' dtype
    autocast: str | None  # autocast dtype, or None
    fit_layers: bool  # as many full-size blocks as fit in memory (at most the model's)


SETTINGS = (
    TrainSetting("vit-b16-full", "vit-b", "full", 64, 197, "fp32", "bf16", False),
    TrainSetting("vit-b16-lora-r4", "vit-b", "lora", 64, 197, "fp32", "bf16", False),
    TrainSetting("llama7b-shaped-lora-r64", "llama-7b", "lora", 4, 640, "bf16", None, True),
    TrainSetting("roberta-base-lora-r64", "roberta-base", "lora", 32, 256, "fp32", None, False),
)
QUICK = {"vit-b16-full": (4, 17), "vit-b16-lora-r4": (4, 17), "llama7b-shaped-lora-r64": (2, 32),
         "roberta-base-lora-r64": (4, 32)}  # batch, seq


@dataclass(frozen=True)
class Scale:
    warmup: int
    steps: int


SCALES = {False: Scale(3, 10), True: Scale(1, 3)}


def quick_setting(s: TrainSetting) -> TrainSetting:
    batch, seq = QUICK[s.name]
    return dataclasses.replace(s, batch=batch, seq=seq, fit_layers=False)


def lora_spec(s: TrainSetting, quick: bool):
    from approxbp.memory.presets import PRESETS

    spec = PRESETS[s.preset].lora
    return dataclasses.replace(spec, rank=min(spec.rank, QUICK_LORA_RANK)) if quick else spec


def make_config(s: TrainSetting, quick: bool, layers: int | None):
    from approxbp.memory.models import fit_sequence
    from approxbp.memory.presets import PRESETS

    config = copy.deepcopy(PRESETS[s.preset].config())
    for field, value in (QUICK_SHAPES[config.model_type] if quick else {}).items():
        setattr(config, field, value)
    if layers is not None:
        config.num_hidden_layers = layers
    fit_sequence(config, s.seq)
    return config


def _free_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024


def layers_that_fit(s: TrainSetting, device: str, lora) -> dict:
    """Full-size blocks that fit in 85% of the free memory: per block its weights plus the baseline's activation
    bytes per block (``approxbp.memory`` on a 2-block model), besides the embeddings, head and fp32 logits (3
    copies: logits, their softmax and its gradient)."""
    from approxbp.memory import Setting, measure

    config = make_config(s, False, None)
    h, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    element = 2 if s.dtype in ("bf16", "fp16") else 4
    block_weights = (4 * h * h + 3 * h * inter) * element
    try:
        profile = measure(Setting(lambda: make_config(s, False, 2), s.batch, s.seq, s.dtype, s.tuning,
                                  lora)).profiles["baseline"]
    except (ValueError, RuntimeError, NotImplementedError) as e:
        raise RuntimeError(f"cannot size the {s.name} decoder with approxbp.memory ({type(e).__name__}: {e}); give "
                           "its blocks with --decoder-layers") from e
    block_activations = max(sum(profile.bytes_by_kind(i).values()) for i in range(profile.num_blocks))
    fixed = 2 * vocab * h * element + 3 * s.batch * s.seq * vocab * 4
    free = _free_bytes(device)
    fit = math.floor((0.85 * free - fixed) / (block_weights + block_activations))
    return {"layers": max(1, min(config.num_hidden_layers, fit)), "model_layers": config.num_hidden_layers,
            "free_bytes": free, "block_weight_bytes": block_weights, "block_activation_bytes": block_activations}


def _converted(variant: str) -> dict | None:
    from approxbp.memory.measurement import VARIANTS

    return VARIANTS["both" if variant == "both+checkpointing" else "baseline" if variant == "checkpointing"
                    else variant]


def build_run(s: TrainSetting, config, variant: str, device: str, lora):
    """The model to run (PeftModel for LoRA), converted and checkpointed as ``variant`` asks, and a batch."""
    import warnings

    import approxbp
    from approxbp.memory.models import apply_tuning, build, make_batch

    torch.manual_seed(0)
    with torch.device(device):
        model = build(copy.deepcopy(config), s.dtype, "cpu")  # "cpu": HF's SDPA attention, which picks the kernel
        run_model = apply_tuning(model, s.tuning, lora)
        options = _converted(variant)
        report = None
        if options is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = approxbp.convert(run_model, **options)
        if variant.endswith("checkpointing"):
            enable_checkpointing(model)
        batch = make_batch(model, s.batch, s.seq, s.dtype)
    return run_model, batch, report


def enable_checkpointing(model) -> None:
    """HF activation checkpointing of every block, non-reentrant (``gradient_checkpointing_enable``, which
    transformers 5 renamed ``activation_checkpointing_enable``)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def make_step(run_model, batch: dict, s: TrainSetting, device: str) -> Callable[[], None]:
    trainable = [p for p in run_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    autocast = torch.autocast(device, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[s.autocast]) \
        if s.autocast else nullcontext()

    def step():
        with autocast:
            loss = run_model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_variant(s: TrainSetting, config, variant: str, device: str, scale: Scale, lora) -> dict:
    from approxbp.saved import record_saved

    run_model, batch, report = build_run(s, config, variant, device, lora)
    step = make_step(run_model, batch, s, device)
    for _ in range(scale.warmup):
        step()
    result = {"conversion": None if report is None else str(report)}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    timing = time_call(step, device, 0, scale.steps)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        result["memory"] = {"metric": "torch.cuda.max_memory_allocated over the timed steps", "peak_bytes": peak,
                            "allocated_before_step_bytes": before, "peak_minus_before_bytes": peak - before}
    else:
        with record_saved(run_model) as saved:
            step()
        result["memory"] = {"metric": "CPU: bytes autograd saves in one step's forward (record_saved; not a peak)",
                            "autograd_saved_bytes": saved.bytes}
    median = timing.median_s
    result.update(timing=timing.to_json(), samples_per_s=s.batch / median, tokens_per_s=s.batch * s.seq / median)
    del run_model, batch, step
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def predict(s: TrainSetting, config, lora) -> dict:
    """The profiler's activation bytes per variant, or why there are none.  Checkpointed variants: where
    ``approxbp.memory``'s Setting has a ``checkpointing`` option, its ``CHECKPOINTED`` variants of the baseline and
    of both."""
    try:
        from approxbp.memory import Setting, measure
        from approxbp.memory import measurement as profiler
    except ImportError as e:
        return {name: {"unavailable": f"approxbp.memory cannot load: {e}"} for name in VARIANT_NAMES}
    dtype = s.autocast or s.dtype
    fields = {"config": lambda: copy.deepcopy(config), "batch": s.batch, "seq": s.seq, "dtype": dtype,
              "tuning": s.tuning, "lora": lora}
    checkpointing = "checkpointing" in {f.name for f in dataclasses.fields(Setting)}
    if checkpointing:
        fields["checkpointing"] = True
    names = {name: name for name in ("baseline", "approx", "ms", "both")}  # ours -> the profiler's
    ours = {"baseline": "checkpointing", "both": "both+checkpointing"}
    names.update({ours[target]: theirs for theirs, target in getattr(profiler, "CHECKPOINTED", {}).items()
                  if checkpointing and target in ours})
    try:
        m = measure(Setting(**fields))
    except (ValueError, RuntimeError, NotImplementedError) as e:
        return {name: {"unavailable": f"approxbp.memory.measure failed: {type(e).__name__}: {e}"}
                for name in VARIANT_NAMES}
    source = (f"approxbp.memory.measure: fake tensors, GPU kernels, pure {dtype}, activation bytes kept after the "
              "forward, whole model")
    out = {}
    for name in VARIANT_NAMES:
        theirs = names.get(name)
        if theirs in m.profiles:
            out[name] = {"activation_bytes": m.profiles[theirs].total, "profiler_variant": theirs, "source": source}
        else:
            why = m.unavailable.get(theirs) if theirs else "approxbp.memory has no checkpointing option in this version"
            out[name] = {"unavailable": why or f"the profiler returned no {theirs!r} variant"}
    return out


def run(device: str, quick: bool, predictions: bool = True, log: Callable[[str], None] = print,
        names: tuple[str, ...] | None = None, decoder_layers: int | None = None) -> dict:
    """Every setting (or those ``names`` lists) x variant: memory, throughput and the profiler's prediction.
    ``decoder_layers`` sets the LLaMA-shaped decoder's blocks instead of as many as fit."""
    scale = SCALES[quick]
    settings = []
    for base in SETTINGS:
        if names is not None and base.name not in names:
            continue
        s = quick_setting(base) if quick else base
        lora = lora_spec(s, quick)
        fit = layers_that_fit(s, device, lora) if s.fit_layers and decoder_layers is None else None
        layers = decoder_layers if base.fit_layers and decoder_layers is not None else fit["layers"] if fit else None
        config = make_config(s, quick, layers)
        entry = {"name": s.name, "model": config.model_type, "preset": s.preset, "tuning": s.tuning,
                 "batch": s.batch, "seq": s.seq, "dtype": s.dtype, "autocast": s.autocast,
                 "layers": config.num_hidden_layers, "hidden": config.hidden_size,
                 "intermediate": config.intermediate_size, "layers_fit": fit,
                 "lora": dataclasses.asdict(lora) if s.tuning == "lora" else None, "variants": {}}
        prediction = predict(s, config, lora) if predictions else {}
        for variant in VARIANT_NAMES:
            log(f"training: {s.name} {variant}")
            try:
                result = measure_variant(s, config, variant, device, scale, lora)
            except (RuntimeError, ValueError) as e:  # recorded; the CLI exits non-zero
                result = {"failed": f"{type(e).__name__}: {e}".splitlines()[0]}
                log(f"training: {s.name} {variant} FAILED: {result['failed']}")
            result["prediction"] = prediction.get(variant, {"unavailable": "predictions switched off"})
            entry["variants"][variant] = result
        _ratios(entry["variants"], device)
        settings.append(entry)
    return {"warmup_steps": scale.warmup, "timed_steps": scale.steps,
            "step": "forward + loss + backward + AdamW step", "settings": settings}


def _ratios(variants: dict, device: str) -> None:
    """Each variant's throughput and memory relative to the baseline's (where both ran)."""
    key = "peak_bytes" if device == "cuda" else "autograd_saved_bytes"
    base = variants["baseline"]
    if "failed" in base:
        return
    for v in variants.values():
        if "failed" in v:
            continue
        v["throughput_vs_baseline"] = v["samples_per_s"] / base["samples_per_s"]
        v["memory_vs_baseline"] = v["memory"][key] / base["memory"][key] if base["memory"][key] else None
