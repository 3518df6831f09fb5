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
