"""Profile one setting in its four variants: baseline, Approx-BP only, MS-BP only, both (via ``approxbp.convert``);
with ``Setting.checkpointing`` also the baseline and both under activation checkpointing of every block (HF's
``activation_checkpointing_enable``, without reentrance), the paper's Figure 1 comparison.  ``Setting.gated_dtype``
passes ``convert(gated_dtype=...)`` to the Approx-BP variants (approx, both, both+ckpt)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig

from approxbp.conversion import UnsupportedModelError, convert
from approxbp.memory.analytic import FAMILIES, BlockShape, dropout_masks, trainable_roles
from approxbp.memory.fake import fake_mode, materialize
from approxbp.memory.models import DTYPES, apply_tuning, build, fit_sequence, kernel_context, make_batch, run_context
from approxbp.memory.presets import Preset
from approxbp.memory.profile import Profile, find_blocks, profile_saved

REAL_LIMIT = 2**31  # bytes of weights a real-tensor run may allocate

VARIANTS: dict[str, dict | None] = {
    "baseline": None,
    "approx": {"approx": "auto", "norms": None},
    "ms": {"approx": None, "norms": "ms"},
    "both": {"approx": "auto", "norms": "ms"},
}

# checkpointed variant -> the variant it checkpoints (its recomputation saves what that one saves, for one block)
CHECKPOINTED = {"ckpt": "baseline", "both+ckpt": "both"}


def variant_options(name: str) -> dict | None:
    """The approxbp.convert options of a variant (checkpointed ones: those of the variant they checkpoint)."""
    return VARIANTS[CHECKPOINTED.get(name, name)]


@dataclass(frozen=True)
class Setting(Preset):
    """One profiling run: a preset's config, batch, sequence, dtype and tuning, and how it is counted."""

    kernels: str = "gpu"  # see approxbp.memory.models
    fake: bool = True  # FakeTensorMode (nothing allocated); False: real CPU tensors, for small shapes
    layers: int | None = None  # override the config's number of blocks
    checkpointing: bool = False  # also profile the CHECKPOINTED variants
    gated_dtype: str | None = None  # a DTYPES name: Approx-BP variants run convert(gated_dtype=DTYPES[it])

    def __post_init__(self):
        if self.gated_dtype is not None and self.gated_dtype not in DTYPES:
            raise ValueError(f"gated_dtype must be None or one of {', '.join(DTYPES)}, got {self.gated_dtype!r}")

    def make_config(self) -> PretrainedConfig:
        config = copy.deepcopy(self.config())
        if self.layers is not None:
            config.num_hidden_layers = self.layers
        fit_sequence(config, self.seq)
        return config


class GatedDtypeError(ValueError):
    """The model converts, but not with ``Setting.gated_dtype`` (it has no fused gated MLP activation): the whole
    measurement stops, rather than leaving out the Approx-BP variants."""


def gated_dtype_of(setting: Setting, options: dict | None) -> str | None:
    """The gated_dtype name a variant with convert ``options`` runs: ``setting``'s for Approx-BP variants, else None."""
    return setting.gated_dtype if options and options.get("approx") else None


@dataclass
class Measurement:
    """Profiles of the variants that ran, what conversion did (or why a variant could not run), the middle block's
    shape for the analytic minimum (None for a family ``approxbp.memory.analytic`` does not describe)."""

    config: PretrainedConfig
    model_class: str
    shape: BlockShape | None
    profiles: dict[str, Profile] = field(default_factory=dict)
    conversions: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    profile: Profile
    run_model: torch.nn.Module  # what ran: the PeftModel in LoRA modes
    model: torch.nn.Module  # the HF model
    conversion: str | None  # the conversion report


def run_variant(setting: Setting, config: PretrainedConfig, convert_kwargs: dict | None = None,
                convert: Callable | None = None, checkpointing: bool = False) -> Run:
    """Build, tune, convert (with ``convert_kwargs``, plus ``setting.gated_dtype`` when they convert activations),
    optionally checkpoint every block, and run the model once under the profiler.  Fake runs build and convert on
    ``meta`` (``approxbp.convert`` skips its checks of weight values there), then materialise."""
    torch.manual_seed(0)
    report = None
    with torch.device("meta") if setting.fake else nullcontext():
        model = build(config, setting.dtype, setting.kernels)
        if setting.fake and setting.dtype == "fp32":
            _check_fake_fp32(model)
        run_model = apply_tuning(model, setting.tuning, setting.lora)
        if convert_kwargs is not None:
            example = make_batch(model, setting.batch, setting.seq, setting.dtype)
            gated = gated_dtype_of(setting, convert_kwargs)
            report = str(_convert_gated(convert, run_model, convert_kwargs, example, gated))
        if checkpointing:
            model.config.use_cache = False  # what HF sets (and says it sets) under checkpointing
            model.activation_checkpointing_enable({"use_reentrant": False})
    with fake_mode() if setting.fake else nullcontext():
        if setting.fake:
            materialize(run_model)
        torch.manual_seed(0)
        batch = make_batch(model, setting.batch, setting.seq, setting.dtype)
        with kernel_context(setting.kernels), run_context(setting.tuning, setting.dtype), \
                profile_saved(run_model, checkpointed=checkpointing) as profile:
            run_model(**batch)
    return Run(profile, run_model, model, report)


def _check_fake_fp32(model: torch.nn.Module) -> None:
    """ValueError for stacked MoE experts run by ``torch._grouped_mm``, whose fake (meta) kernel takes bf16/fp16 only
    (the routed rows, summed over experts, are tokens x top-k whatever the routing: their bytes do not depend on it)."""
    experts = next((m for m in model.modules() if hasattr(m, "has_gate") and hasattr(m, "config")), None)
    if experts is not None and experts.config._experts_implementation == "grouped_mm":
        raise ValueError(f"{type(experts).__name__} runs torch._grouped_mm, whose fake-tensor kernel takes only "
                         f"bf16/fp16: use --dtype bf16, or --real for a small fp32 model")


def _convert(convert: Callable, run_model: torch.nn.Module, kwargs: dict, batch: dict):
    """``convert(run_model, **kwargs)`` by the rules; for a model they leave unsupported, the generic path with
    ``batch`` as its example inputs (``approxbp.conversion.generic``; on ``meta`` too).  Returns the report."""
    with warnings.catch_warnings():  # what convert leaves is in its report
        warnings.simplefilter("ignore")
        try:
            return convert(run_model, **kwargs)
        except UnsupportedModelError:  # the model is unchanged
            return convert(run_model, **kwargs, example_inputs=batch)


def _convert_gated(convert: Callable, run_model: torch.nn.Module, kwargs: dict, batch: dict, gated: str | None):
    """``_convert`` with ``gated_dtype=DTYPES[gated]`` (unless None); GatedDtypeError when only that option fails
    (convert changes nothing when it raises, so the same model converts again without it)."""
    if gated is None:
        return _convert(convert, run_model, kwargs, batch)
    try:
        return _convert(convert, run_model, {**kwargs, "gated_dtype": DTYPES[gated]}, batch)
    except ValueError as e:
        _convert(convert, run_model, kwargs, batch)  # raises the variant's own error, if it has one
        raise GatedDtypeError(f"gated dtype {gated}: {e}") from e


def block_shape(config: PretrainedConfig, run_model: torch.nn.Module, dtype: str) -> BlockShape | None:
    """The analytic model's view of the middle block, or None for a family it does not describe."""
    layout = FAMILIES.get(config.model_type)
    if layout is None:
        return None
    block = find_blocks(run_model)[len(find_blocks(run_model)) // 2]
    keeps, ranks = trainable_roles(block, layout)
    heads = config.num_attention_heads
    return BlockShape(layout, config.hidden_size, config.intermediate_size, heads,
                      getattr(config, "num_key_value_heads", None) or heads, DTYPES[dtype].itemsize, keeps, ranks,
                      dropout_masks(block, layout, config.hidden_size))


def _check_real_size(setting: Setting, config: PretrainedConfig) -> None:
    with torch.device("meta"):
        model = build(config, setting.dtype, setting.kernels)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if nbytes > REAL_LIMIT:
        raise ValueError(f"a real-tensor run would allocate {nbytes / 2**30:.1f} GiB of weights (limit "
                         f"{REAL_LIMIT / 2**30:.0f} GiB); fake tensors (the default) count the same without allocating")


def measure(setting: Setting) -> Measurement:
    """Profile ``setting`` in every variant of ``VARIANTS`` (and of ``CHECKPOINTED`` with ``setting.checkpointing``);
    a converted variant is skipped, with the reason, when ``approxbp.convert`` refuses the model.  GatedDtypeError
    when ``setting.gated_dtype`` is given for a model without a fused gated MLP activation."""
    config = setting.make_config()
    if not setting.fake:
        _check_real_size(setting, config)
    baseline = run_variant(setting, config)
    measurement = Measurement(config, type(baseline.model).__name__,
                              block_shape(config, baseline.run_model, setting.dtype), {"baseline": baseline.profile})
    names = [*VARIANTS, *(CHECKPOINTED if setting.checkpointing else ())]
    for name in names:
        kwargs, checkpointing = variant_options(name), name in CHECKPOINTED
        if kwargs is None and not checkpointing:
            continue
        try:
            run = run_variant(setting, config, kwargs, convert if kwargs else None, checkpointing)
        except GatedDtypeError:
            raise
        except ValueError as e:  # UnsupportedModelError is one
            measurement.unavailable[name] = f"{type(e).__name__}: {e}"
            continue
        measurement.profiles[name], measurement.conversions[name] = run.profile, run.conversion
    return measurement
