"""Set before anything else is imported, in the first conftest pytest loads:

- Under pytest-xdist (CI: ``-n 2`` on 2 cores) each worker gets one OpenMP/BLAS thread, so that the workers do not
  oversubscribe the cores (the thread pools are sized when torch, numpy and scipy load their libraries).

The device axis of the Triton tests: the ``device`` fixture gives ``cpu`` always (the kernels run in Triton's
interpreter, in this process, whether or not a GPU is present: ``approxbp.kernels.launch``) and ``cuda`` when torch
sees a GPU (compiled kernels); the ``cuda`` items carry the ``gpu`` mark and skip with a reason elsewhere.
TRITON_INTERPRET is not set: the kernels stay compiled-mode JIT functions, which the ahead-of-time compile tests
(``tests/kernels``) need and which the interpreter runs for CPU tensors."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

NO_GPU = "no CUDA device: the GPU axis of the Triton tests runs on a machine with one"
DEVICES = ("cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                   reason=NO_GPU)]))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Where the Triton kernels of a test run: cpu (Triton's interpreter), cuda (compiled; skipped without a GPU)."""
    return torch.device(request.param)
