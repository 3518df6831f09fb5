"""Planning a whole conversion without touching the model: the checked options, the ``Plan`` and the report that
``convert`` then applies, and ``plan_activations`` (the names ``convert`` would give Approx-BP activations)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from approxbp.conversion.generic import plan_generic
from approxbp.conversion.plan import Plan, check_block
from approxbp.conversion.report import ConversionReport, UnsupportedModelError, describe_skips
from approxbp.conversion.rules import APPROX_MODES, RULES, Rule, matches
from approxbp.fit.result import check_bits
from approxbp.tables import SHIPPED_OBJECTIVES

RECORD = "_approxbp_conversion"


def check_options(approx, norms, bits, objective, tables) -> dict:
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


def check_model(model, caller: str) -> None:
    """TypeError unless ``model`` is a torch.nn.Module (``caller`` names the function in the message)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller} needs a torch.nn.Module as model, got {type(model).__name__}: {model!r:.60}")


def is_converted(model: nn.Module) -> bool:
    """Whether ``model`` or a module in it is converted."""
    return any(RECORD in m.__dict__ for m in model.modules())


def plan_model(model: nn.Module, options: dict, rules: Sequence[Rule],
               example_inputs=None) -> tuple[Plan, ConversionReport]:
    """Every swap and fold ``convert(model, **options, rules=rules, example_inputs=example_inputs)`` makes, and its
    report; the model is untouched (``example_inputs``: one recorded forward, ``approxbp.conversion.generic``).
    Raises for tables naming no converted activation, and UnsupportedModelError when nothing would be converted."""
    plan = Plan(**options)
    for name, module in model.named_modules():
        for rule in rules:
            if matches(rule, type(module)):
                check_block(name, module)
                plan.block(name, module, rule)
    if example_inputs is not None:
        check_block("", model)
        plan_generic(plan, model, example_inputs)
    plan.uncovered(model)
    shown = {**options, "tables": len(options["tables"])}
    report = ConversionReport(tuple(shown.items()), tuple(plan.changes), tuple(plan.skipped))
    unknown = sorted(set(plan.tables) - plan.used_tables)
    if unknown:
        raise ValueError(f"tables given for modules that are not converted activations: {', '.join(unknown)}; "
                         f"converted activations: {', '.join(report.activations) or 'none'}")
    if not plan.changes:
        raise UnsupportedModelError(f"approxbp.convert found nothing to convert in {type(model).__name__} "
                                    f"(approx={options['approx']!r}, norms={options['norms']!r}); the model is "
                                    "unchanged." + (f" Left as they were:\n{describe_skips(report.skipped)}"
                                                    if report.skipped else " No module matches a conversion rule."))
    return plan, report


def plan_activations(model: nn.Module, approx: str = "auto", rules: Sequence[Rule] = RULES,
                     example_inputs=None) -> tuple[str, ...]:
    """The qualified names of the activations ``convert(model, approx=approx, norms=None, rules=rules,
    example_inputs=example_inputs)`` would convert (the keys of its ``tables=``), found without changing anything in
    ``model``, which must not be converted.  UnsupportedModelError if there are none."""
    check_model(model, "approxbp.plan_activations")
    if is_converted(model):
        raise ValueError("plan_activations needs the unconverted model; approxbp.revert first")
    _, report = plan_model(model, check_options(approx, None, 2, "primitive", None), rules, example_inputs)
    return report.activations
