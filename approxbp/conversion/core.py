"""``convert`` and ``revert``: swap a model's activations and norms for Approx-BP / MS-BP ones, in place, reversibly.

Which modules change is decided by the rules in ``approxbp.conversion.rules`` (one per block structure).  Everything is
planned and checked first (options, tables, devices, dtypes), so an error leaves the model as it was.  The record of
what changed is kept on the model (attribute ``_approxbp_conversion``); ``revert`` puts the original modules back and
restores the folded weights (see ``approxbp.conversion.fold`` for the gradients of folded norms and for LoRA).

Order: build the model (load its checkpoint), add peft adapters, convert, then wrap (DDP, FSDP's ``fully_shard``,
``torch.compile``).  A converted model's ``state_dict`` holds folded weights and lacks the folded norms' gamma/beta,
so it is not a checkpoint of the unconverted model (``load_state_dict(strict=False)`` there would keep that model's
own norms): save ``unconverted_state_dict(model)`` (or save after ``revert``) for the unconverted model, and load the
original checkpoint before ``convert`` (loading it into the converted model is refused: ``approxbp.conversion.guards``).
peft adapter files are unaffected; peft's merge/unmerge of a folded adapter is folded too
(``approxbp.conversion.lora_merge``), and adapters added after the conversion are refused.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from approxbp.conversion import lora_merge, lora_path
from approxbp.conversion.fold import LinearFold, fold_into_linear
from approxbp.conversion.guards import FoldedReaderWatch, OriginalStateDictGuard
from approxbp.conversion.layers import hand_back
from approxbp.conversion.plan import Swap
from approxbp.conversion.planner import RECORD, check_model, check_options, is_converted, plan_model
from approxbp.conversion.report import ConversionReport, describe_skips
from approxbp.conversion.rules import RULES, Rule
from approxbp.modules.gated import ApproxGeGLU, ApproxSwiGLU, check_input_dtype


@dataclass
class Conversion:
    """What ``convert`` changed, kept on the model for ``revert``: the swaps (with the dtype of each swap's parent
    then, to tell whether the model was cast since), the folds, the hooks and the LoRA layers given merge methods."""

    options: dict
    swaps: list[Swap]
    dtypes: list[torch.dtype | None]
    folds: list[LinearFold]
    hooks: list[RemovableHandle]
    lora_layers: list[nn.Module]
    report: ConversionReport


def convert(model: nn.Module, approx: str | None = "auto", norms: str | None = "ms", bits: int = 2,
            objective: str = "primitive", tables: dict | None = None, calibration_data: Iterable | None = None,
            rules: Sequence[Rule] = RULES,
            lora: str | None = "packed", dropout: str | None = "packed", example_inputs=None,
            gated_dtype: torch.dtype | None = None) -> ConversionReport:
    """Swap ``model``'s MLP activations for Approx-BP ones and its norms for MS-BP ones, in place; returns a report.

    approx: "auto" (every GELU, GELU-tanh, SiLU, QuickGELU: the exact forward, the ``bits``-bit ``objective`` table
        of its own function for the backward; gated MLPs act(gate) * up use the fused approx_swiglu/approx_geglu),
        "regelu2" (GELU forms only, 2 bits), "resilu2" (SiLU only, 2 bits), or None (activations unchanged).
    norms: "ms" (pre-norms: gamma/beta folded into the reading linear layers and MSLayerNorm/MSRMSNorm without
        affine; post-LN LayerNorms: MSLayerNormAffine with the same parameters) or None.
    tables: {activation name: table} (a Table, FitResult or (thresholds, levels)) for per-layer tables.  A name is
        the activation module's qualified name in ``model`` as ``model.named_modules()`` gives it before conversion
        (e.g. "model.layers.0.mlp.act_fn"; under a PeftModel "base_model.model.model.layers.0.mlp.act_fn"); the
        report's ``activations`` lists them, and the converted module sits at that same name.
    calibration_data: batches for ``approxbp.calibrate``: every converted activation gets the ``bits``-bit table
        fitted to its own pre-activations on them (``tables`` entries, if any, take precedence).  Converting an
        already calibrated model again with the same other options is a no-op (it does not recalibrate).
    rules: the architecture rules (default ``approxbp.conversion.rules.RULES``); add a ``Rule`` for a block class with
        the structure of one listed there.
    lora: "packed" (peft LoRA layers over nn.Linear save x, A's output and a 1-bit dropout mask, not a dropped copy
        of x) or None; dropout: "packed" (nn.Dropout modules save a 1-bit mask) or None.  Both exact, same RNG draws
        (``approxbp.conversion.lora_path``); listed in ``report.packed``.
    example_inputs: inputs of one forward (a tensor, a tuple of positional or a dict of keyword inputs) turning on
        the generic path for the modules no rule covers (``approxbp.conversion.generic``): every GELU/SiLU/QuickGELU
        module, and every norm whose output that forward shows read only by linear layers (folded).
    gated_dtype: a dtype the fused gated activations cast gate and up to (``input_dtype`` of ApproxSwiGLU /
        ApproxGeGLU), so that act(gate) * up, the gate and up it keeps and the down projection's input are in it;
        None (default): as the MLP's layers return them.  For QLoRA under bf16 autocast: peft's recipe
        (``prepare_model_for_kbit_training``) makes the 4-bit layers return fp32, which ``torch.bfloat16`` here
        keeps in half the bytes, rounding gate and up to bf16 (not exact: ``tests/qlora`` measures the gradients).

    Modules no rule covers, or whose conversion would not be exact, are left and listed in ``report.skipped``
    (a warning names the unexpected ones); if nothing can be converted, UnsupportedModelError is raised and the model
    is unchanged.  Calling convert again with the same options returns the first report and changes nothing.
    """
    check_model(model, "approxbp.convert")
    options = check_options(approx, norms, bits, objective, tables)
    if calibration_data is not None and approx is None:
        raise ValueError("calibration_data fits Approx-BP tables, so it needs approx='auto', 'regelu2' or 'resilu2'")
    lora_path.check(lora, dropout)
    check_input_dtype(gated_dtype, "gated_dtype")
    if gated_dtype is not None and approx is None:
        raise ValueError("gated_dtype is the dtype of the fused gated activations, so it needs approx='auto'")
    recorded = {**options, "rules": tuple(rules), "calibrated": calibration_data is not None, "lora": lora,
                "dropout": dropout, "generic": example_inputs is not None, "gated_dtype": gated_dtype}
    existing = model.__dict__.get(RECORD)
    if existing is not None:
        comparable = {**existing.options, "tables": options["tables"]} if recorded["calibrated"] else existing.options
        if comparable != recorded:
            raise ValueError(f"the model is already converted with {existing.report.options}; "
                             "approxbp.revert(model) first to convert it differently")
        return existing.report
    if is_converted(model):
        raise ValueError("part of this model is already converted; revert that module first")
    if calibration_data is not None:
        from approxbp.calibration import calibrate

        options["tables"] = {**calibrate(model, calibration_data, bits, approx=approx,
                                              example_inputs=example_inputs), **options["tables"]}
        recorded["tables"] = options["tables"]

    plan, report = plan_model(model, options, rules, example_inputs)
    if gated_dtype is not None:
        report = _cast_gated_inputs(plan, report, gated_dtype)
    packed, left, lora_forwards = lora_path.extend_plan(model, plan, lora, dropout, rules)
    report = dataclasses.replace(report, skipped=report.skipped + tuple(left), packed=tuple(packed))
    original_keys = set(model.state_dict())
    folds = [fold_into_linear(r.linear, r.gamma, r.beta, r.name) for r in plan.readers]
    for swap in plan.swaps:
        swap.replacement.training = swap.original.training
        setattr(swap.parent, swap.attr, swap.replacement)
    dtypes = [None if (placed := _placement(s.parent)) is None else placed[1] for s in plan.swaps]
    now = {id(s.original): s.replacement for s in plan.swaps}  # a reader's parent may be a swapped MLP
    hooks = [r.linear.register_forward_pre_hook(FoldedReaderWatch(r.name, now.get(id(r.parent), r.parent), r.attr))
             for r in plan.readers]
    original_only = sorted(original_keys - set(model.state_dict()))
    if original_only:
        hooks.append(model.register_load_state_dict_pre_hook(OriginalStateDictGuard(original_only)))
    lora_layers = [r.module for r in plan.readers if r.module is not r.linear]
    for reader in plan.readers:
        if reader.module is not reader.linear:
            lora_merge.install(reader.module, reader.name)
    lora_path.install(lora_forwards)
    lora_merge.watch({r.name: r.linear for r in plan.readers if r.module is r.linear})
    setattr(model, RECORD, Conversion(recorded, plan.swaps, dtypes, folds, hooks, lora_layers, report))
    if report.unexpected:
        warnings.warn(f"approxbp.convert left {len(report.unexpected)} module(s) unconverted:\n"
                      f"{describe_skips(report.unexpected)}", stacklevel=2)
    return report


def _cast_gated_inputs(plan, report: ConversionReport, dtype: torch.dtype) -> ConversionReport:
    """Give every fused gated activation the plan puts in ``input_dtype`` ``dtype``; the report says so.
    ValueError if the plan has none."""
    fused = [m for s in plan.swaps for m in s.replacement.modules() if isinstance(m, (ApproxSwiGLU, ApproxGeGLU))]
    if not fused:
        raise ValueError("gated_dtype given, but convert fuses no gated MLP activation in this model")
    for module in fused:
        module.input_dtype = dtype
    changes = tuple(dataclasses.replace(c, after=f"{c.after}; gate and up in {dtype}") if c.kind == "gated-mlp"
                    else c for c in report.changes)
    return dataclasses.replace(report, options=(*report.options, ("gated_dtype", dtype)), changes=changes)


def _placement(parent: nn.Module) -> tuple[torch.device, torch.dtype] | None:
    """(device, dtype) of the first floating-point parameter (else buffer) under ``parent``: where the model is now."""
    tensors = itertools.chain(parent.parameters(), parent.buffers())
    return next(((t.device, t.dtype) for t in tensors if t.is_floating_point()), None)


def revert(model: nn.Module) -> None:
    """Undo ``convert(model)``: the original modules come back, and the folded linear layers get their original
    weights (bit for bit if they were not changed since; unfolded from their current values if they were trained).
    The model comes back on its current device and, if it was cast since the conversion (``.to(torch.bfloat16)``,
    ``.double()``), in its current dtype.  Everything is checked first: an error leaves the model converted."""
    check_model(model, "approxbp.revert")
    record = model.__dict__.get(RECORD)
    if record is None:
        raise ValueError("approxbp.revert: this module was not converted (pass the module given to approxbp.convert)")
    moved = [f"{type(s.parent).__name__}.{s.attr}" for s in record.swaps
             if getattr(s.parent, s.attr, None) is not s.replacement]
    if moved:
        raise RuntimeError(f"approxbp.revert: modules were replaced since the conversion: {', '.join(moved)}")
    problems = [f"{f.name}: {problem}" for f in record.folds if (problem := f.undo_problem())]
    if problems:
        raise RuntimeError(f"approxbp.revert: cannot restore {len(problems)} folded layer(s), the model is left "
                           f"converted: {problems[0]}")
    for fold in record.folds:  # before the norms come back cast: undo reads their gamma/beta as they were folded
        fold.undo()
    placements = [_placement(s.parent) for s in record.swaps]
    for swap, placed, dtype in reversed(list(zip(record.swaps, placements, record.dtypes, strict=True))):
        hand_back(swap.replacement, swap.original)
        if placed is not None:
            swap.original.to(placed[0])
            if dtype is not None and placed[1] != dtype:
                swap.original.to(placed[1])
        setattr(swap.parent, swap.attr, swap.original)
    for hook in record.hooks:
        hook.remove()
    for layer in record.lora_layers:
        lora_merge.uninstall(layer)
    lora_path.uninstall(model)
    lora_merge.unwatch([fold.linear for fold in record.folds])
    del model.__dict__[RECORD]


def unconverted_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict of ``model`` as ``revert`` would give it (the norms' gamma/beta, unfolded reader weights: the
    unconverted model's keys and values, which that model loads strictly), leaving ``model`` converted.  A deep copy
    of the model is reverted: this costs the memory of one more copy of the model while it runs."""
    check_model(model, "approxbp.conversion.unconverted_state_dict")
    if RECORD not in model.__dict__:
        raise ValueError("approxbp.conversion.unconverted_state_dict: this module was not converted (pass the module "
                         "given to approxbp.convert)")
    twin = copy.deepcopy(model)
    revert(twin)
    return twin.state_dict()
