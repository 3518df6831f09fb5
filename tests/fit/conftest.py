"""``fitted(target, bits, objective)``: the fitter's tables with default options, each fitted from scratch once per test
session and shared by the tests that need the same table (the drift test refits every shipped table; the others ask
for 2-bit tables again).  Under pytest-xdist the worker that asks first fits it under a file lock in the session's
shared temporary folder and writes its pickle atomically; the others read the pickle or, while the table is being
fitted elsewhere, fit it themselves rather than wait idle.  The fits are deterministic (``test_deterministic`` compares
a shared fit with one recomputed in the test), so sharing changes no result, only how often the search runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from approxbp.fit import fit
from approxbp.fit.result import FitResult


def shared(path: Path, compute):
    """The object pickled at ``path``; else computed here, and written there unless another process is computing it."""
    if not path.exists():
        try:
            with FileLock(f"{path}.lock").acquire(timeout=0):
                if not path.exists():
                    result = compute()
                    partial = path.with_suffix(".partial")
                    partial.write_bytes(pickle.dumps(result))
                    os.replace(partial, path)
                    return result
        except Timeout:
            return compute()
    return pickle.loads(path.read_bytes())


@pytest.fixture(scope="session")
def fitted(tmp_path_factory):
    root = tmp_path_factory.getbasetemp()
    folder = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "shared_fits"
    folder.mkdir(exist_ok=True)
    memo: dict[tuple, FitResult] = {}

    def get(target: str, bits: int, objective: str = "primitive") -> FitResult:
        key = (target, int(bits), objective)
        if key not in memo:
            memo[key] = shared(folder / f"{target}-{int(bits)}-{objective}.pickle", lambda: fit(*key))
        return memo[key]

    return get
