"""The committed kernels/constants.py is exactly what the fitter produces (drift test), and emission is atomic."""

import os

import numpy as np
import pytest

from approxbp.fit.emit import SHIPPED_BITS, SHIPPED_OBJECTIVES, default_path, emit, load_tables, render, table_key
from approxbp.kernels import constants
from approxbp.targets import TARGET_NAMES

SHIPPED = [table_key(t, b, o) for t in TARGET_NAMES for b in SHIPPED_BITS for o in SHIPPED_OBJECTIVES]


def test_committed_file_holds_exactly_the_shipped_tables():
    assert sorted(constants.TABLES) == sorted(SHIPPED)
    assert load_tables() == constants.TABLES
    assert default_path().read_text() == render(constants.TABLES)


@pytest.mark.parametrize("key", SHIPPED)
def test_no_drift(key, fitted):
    target, bits, objective = key.split("/")
    fresh = fitted(target, int(bits), objective)
    committed = constants.TABLES[key]
    # the optimum is recomputed from scratch; flat directions of the objective allow ~1e-6 in the knots
    np.testing.assert_allclose(fresh.thresholds, committed["thresholds"], atol=1e-6)
    np.testing.assert_allclose(fresh.levels, committed["levels"], atol=1e-6)
    assert fresh.objective_value == pytest.approx(committed["objective_value"], rel=1e-9)
    assert fresh.sup_error == pytest.approx(committed["sup_error"], rel=1e-6)


def test_emit_merges_and_is_atomic(tmp_path, monkeypatch, fitted):
    path = tmp_path / "constants.py"
    r1, r2 = fitted("gelu", 1), fitted("silu", 1)
    emit([r1], path)
    emit([r2], path)
    assert set(load_tables(path)) == {"gelu/1/primitive", "silu/1/primitive"}
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        emit([fitted("quick_gelu", 1)], path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["constants.py"]
