"""approxbp: Approx-BP and MS-BP for memory-efficient fine-tuning (Yang et al., ICML 2024).

The torch parts are imported on first use, so ``python -m approxbp.fit`` never imports torch or triton."""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Table": "approxbp.tables",
    "default_table": "approxbp.tables",
    "record_saved": "approxbp.saved",
    "use_backend": "approxbp.ops.backend",
    "approx_act": "approxbp.ops.approx_act",
    "regelu2": "approxbp.ops.approx_act",
    "resilu2": "approxbp.ops.approx_act",
    "approx_swiglu": "approxbp.ops.gated",
    "approx_geglu": "approxbp.ops.gated",
    "ms_layer_norm": "approxbp.ops.ms_norm",
    "ms_rms_norm": "approxbp.ops.ms_norm",
    "ms_layer_norm_affine": "approxbp.ops.ms_norm",
    "ApproxAct": "approxbp.modules.approx_act",
    "ReGELU2": "approxbp.modules.approx_act",
    "ReSiLU2": "approxbp.modules.approx_act",
    "ApproxSwiGLU": "approxbp.modules.gated",
    "ApproxGeGLU": "approxbp.modules.gated",
    "MSLayerNorm": "approxbp.modules.ms_norm",
    "MSRMSNorm": "approxbp.modules.ms_norm",
    "MSLayerNormAffine": "approxbp.modules.ms_norm",
    "convert": "approxbp.conversion",
    "revert": "approxbp.conversion",
    "unconverted_state_dict": "approxbp.conversion",
    "ConversionReport": "approxbp.conversion",
    "UnsupportedModelError": "approxbp.conversion",
    "calibrate": "approxbp.calibration",
    "PreactivationHistogram": "approxbp.calibration",
}
__all__ = ["__version__", *_EXPORTS]


_SUBPACKAGES = ("conversion", "fit", "kernels", "memory", "modules", "ops", "proofs")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return import_module(f"approxbp.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'approxbp' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
