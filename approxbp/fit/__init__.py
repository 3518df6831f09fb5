"""The Approx-BP fitter: backward tables (thresholds, levels) for every target, bits and objective.

Pure NumPy/SciPy/SymPy: importing it (or running ``python -m approxbp.fit``) never imports torch or triton.  The
names below load on first use, so ``approxbp.fit.result`` (FitResult, check_bits: what the ops need) comes without
scipy or sympy.
"""

from importlib import import_module

_EXPORTS = {
    "MAX_BITS": "approxbp.fit.result",
    "OBJECTIVES": "approxbp.fit.result",
    "Evidence": "approxbp.fit.result",
    "FitResult": "approxbp.fit.result",
    "Histogram": "approxbp.fit.empirical",
    "fit": "approxbp.fit.api",
    "official": "approxbp.fit.api",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'approxbp.fit' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
