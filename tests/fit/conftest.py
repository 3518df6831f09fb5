"""``fitted(target, bits, objective)``: the fitter's tables with default options, each fitted from scratch once per test
session and shared by the tests that need the same table (the drift test refits every shipped table; the others ask
for 2-bit tables again).  Under pytest-xdist the worker that asks first fits it under a file lock in the session's
shared temporary folder; the others read its pickle.  The fits are deterministic (``test_deterministic`` compares a
shared fit with one recomputed in the test), so sharing changes no result, only how often the search runs."""

from __future__ import annotations

import os
import pickle

import pytest
from filelock import FileLock

from approxbp.fit import fit
from approxbp.fit.result import FitResult


@pytest.fixture(scope="session")
def fitted(tmp_path_factory):
    root = tmp_path_factory.getbasetemp()
    folder = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "shared_fits"
    folder.mkdir(exist_ok=True)
    memo: dict[tuple, FitResult] = {}

    def get(target: str, bits: int, objective: str = "primitive") -> FitResult:
        key = (target, int(bits), objective)
        if key not in memo:
            path = folder / f"{target}-{int(bits)}-{objective}.pickle"
            with FileLock(f"{path}.lock"):
                if not path.exists():
                    path.write_bytes(pickle.dumps(fit(target, int(bits), objective)))
                memo[key] = pickle.loads(path.read_bytes())
        return memo[key]

    return get
