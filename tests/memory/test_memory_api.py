"""The package's lazy exports are the functions and classes, whatever was imported before."""

import importlib


def test_exports_are_not_shadowed_by_submodules():
    importlib.import_module("approxbp.memory.measurement")  # a submodule import sets package attributes
    from approxbp.memory import Measurement, Setting, measure, render, to_json

    assert callable(measure) and not hasattr(measure, "__path__") and measure.__name__ == "measure"
    assert isinstance(Setting, type) and isinstance(Measurement, type)
    assert render.__name__ == "render" and to_json.__name__ == "to_json"
