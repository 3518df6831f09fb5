"""The public API: every lazily exported name resolves to the object its module defines."""

import importlib

import pytest

import approxbp


@pytest.mark.parametrize("name", sorted(approxbp._EXPORTS))
def test_export_resolves(name):
    assert getattr(approxbp, name) is getattr(importlib.import_module(approxbp._EXPORTS[name]), name)
    assert name in dir(approxbp)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        approxbp.nope  # noqa: B018


def test_unconverted_state_dict_is_exported_from_conversion_and_the_package():
    from approxbp.conversion import core

    assert approxbp.conversion.unconverted_state_dict is core.unconverted_state_dict
    assert approxbp.unconverted_state_dict is core.unconverted_state_dict
    assert "unconverted_state_dict" in approxbp.conversion.__all__
