"""``convert`` and ``revert``: swap a model's activations and norms for Approx-BP / MS-BP ones, in place, reversibly.

Which modules change is decided by the rules in ``approxbp.conversion.rules`` (one per block structure).  Everything is
planned and checked first (options, tables, devices, dtypes), so an error leaves the model as it was.  The record of
what changed is kept on the model (attribute ``_approxbp_conversion``); ``revert`` puts the original modules back and
restores the folded weights (see ``approxbp.conversion.fold`` for the gradients of folded norms and for LoRA).

Order: build the model, add peft adapters, convert, then wrap (DDP, FSDP's ``fully_shard``, ``torch.compile``).
Revert the module given to ``convert`` before saving full weights or merging LoRA adapters: a converted model's
``state_dict`` has the same keys but holds folded weights (peft adapter files are unaffected).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from approxbp.conversion.fold import LinearFold, fold_into_linear
from approxbp.conversion.plan import Plan, Swap, check_block
from approxbp.conversion.report import ConversionReport, UnsupportedModelError, describe_skips
from approxbp.conversion.rules import APPROX_MODES, RULES, Rule, matches
from approxbp.fit.result import check_bits
from approxbp.tables import SHIPPED_OBJECTIVES

RECORD = "_approxbp_conversion"


@dataclass
class Conversion:
    """What ``convert`` changed, kept on the model for ``revert``."""

    options: dict
    swaps: list[Swap]
    folds: list[LinearFold]
    report: ConversionReport


def _check_options(approx, norms, bits, objective, tables) -> dict:
    if approx is not None and approx not in APPROX_MODES:
        raise ValueError(f"approx must be None or one of {', '.join(map(repr, APPROX_MODES))}, got {approx!r}")
    if norms not in (None, "ms"):
        raise ValueError(f"norms must be None or 'ms', got {norms!r}")
    if approx is None and norms is None:
        raise ValueError("approx=None and norms=None: nothing to convert")
    check_bits(bits)
    if approx in ("regelu2", "resilu2") and bits != 2:
        raise ValueError(f"approx={approx!r} is the 2-bit table; use approx='auto' with bits={bits}")
    if objective not in SHIPPED_OBJECTIVES:
        raise ValueError(f"objective must be one of {SHIPPED_OBJECTIVES} (other tables: tables=), got {objective!r}")
    if tables is not None and not isinstance(tables, dict):
        raise TypeError(f"tables must be a dict {{activation name: table}}, got {type(tables).__name__}")
    return {"approx": approx, "norms": norms, "bits": bits, "objective": objective, "tables": dict(tables or {})}


def convert(model: nn.Module, approx: str | None = "auto", norms: str | None = "ms", bits: int = 2,
            objective: str = "primitive", tables: dict | None = None, calibration_data: Iterable | None = None,
            rules: Sequence[Rule] = RULES) -> ConversionReport:
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

    Modules no rule covers, or whose conversion would not be exact, are left and listed in ``report.skipped``
    (a warning names the unexpected ones); if nothing can be converted, UnsupportedModelError is raised and the model
    is unchanged.  Calling convert again with the same options returns the first report and changes nothing.
    """
    options = _check_options(approx, norms, bits, objective, tables)
    if calibration_data is not None and approx is None:
        raise ValueError("calibration_data fits Approx-BP tables, so it needs approx='auto', 'regelu2' or 'resilu2'")
    recorded = {**options, "rules": tuple(rules), "calibrated": calibration_data is not None}
    existing = model.__dict__.get(RECORD)
    if existing is not None:
        comparable = {**existing.options, "tables": options["tables"]} if recorded["calibrated"] else existing.options
        if comparable != recorded:
            raise ValueError(f"the model is already converted with {existing.report.options}; "
                             "approxbp.revert(model) first to convert it differently")
        return existing.report
    if any(RECORD in m.__dict__ for m in model.modules()):
        raise ValueError("part of this model is already converted; revert that module first")
    if calibration_data is not None:
        from approxbp.calibration import calibrate

        options["tables"] = {**calibrate(model, calibration_data, bits, approx=approx), **options["tables"]}
        recorded["tables"] = options["tables"]

    plan = Plan(**options)
    for name, module in model.named_modules():
        for rule in rules:
            if matches(rule, type(module)):
                check_block(name, module)
                plan.block(name, module, rule)
    plan.uncovered(model)
    shown = {**options, "tables": len(options["tables"])}
    report = ConversionReport(tuple(shown.items()), tuple(plan.changes), tuple(plan.skipped))
    unknown = sorted(set(plan.tables) - plan.used_tables)
    if unknown:
        raise ValueError(f"tables given for modules that are not converted activations: {', '.join(unknown)}; "
                         f"converted activations: {', '.join(report.activations) or 'none'}")
    if not plan.changes:
        raise UnsupportedModelError(f"approxbp.convert found nothing to convert in {type(model).__name__} "
                                    f"(approx={approx!r}, norms={norms!r}); the model is unchanged."
                                    + (f" Left as they were:\n{describe_skips(report.skipped)}" if report.skipped
                                       else " No module matches a conversion rule."))
    folds = [fold_into_linear(linear, gamma, beta) for linear, gamma, beta in plan.folds]
    for swap in plan.swaps:
        swap.replacement.training = swap.original.training
        setattr(swap.parent, swap.attr, swap.replacement)
    setattr(model, RECORD, Conversion(recorded, plan.swaps, folds, report))
    if report.unexpected:
        warnings.warn(f"approxbp.convert left {len(report.unexpected)} module(s) unconverted:\n"
                      f"{describe_skips(report.unexpected)}", stacklevel=2)
    return report


def _follow_device(original: nn.Module, parent: nn.Module) -> None:
    """Move a module coming back to where its parent is now (the model may have moved since the conversion; a folded
    norm was not part of it then)."""
    tensors = itertools.chain(parent.parameters(), parent.buffers())
    device = next((t.device for t in tensors if t.is_floating_point()), None)
    if device is not None:
        original.to(device)


def revert(model: nn.Module) -> None:
    """Undo ``convert(model)``: the original modules come back, and the folded linear layers get their original
    weights (bit for bit if they were not changed since; unfolded from their current values if they were trained)."""
    record = model.__dict__.get(RECORD)
    if record is None:
        raise ValueError("approxbp.revert: this module was not converted (pass the module given to approxbp.convert)")
    moved = [f"{type(s.parent).__name__}.{s.attr}" for s in record.swaps
             if getattr(s.parent, s.attr, None) is not s.replacement]
    if moved:
        raise RuntimeError(f"approxbp.revert: modules were replaced since the conversion: {', '.join(moved)}")
    for swap in reversed(record.swaps):
        _follow_device(swap.original, swap.parent)
        setattr(swap.parent, swap.attr, swap.original)
    for fold in record.folds:
        fold.undo()
    del model.__dict__[RECORD]
