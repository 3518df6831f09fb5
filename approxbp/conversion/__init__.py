"""Model conversion: ``convert(model, ...)`` swaps activations and norms for Approx-BP / MS-BP ones; ``revert``."""

from approxbp.conversion.core import convert, revert, unconverted_state_dict
from approxbp.conversion.planner import plan_activations
from approxbp.conversion.report import Change, ConversionReport, Skip, UnsupportedModelError
from approxbp.conversion.rules import RULES, Fold, GatedMLP, Rule

__all__ = ["RULES", "Change", "ConversionReport", "Fold", "GatedMLP", "Rule", "Skip", "UnsupportedModelError",
           "convert", "plan_activations", "revert", "unconverted_state_dict"]
