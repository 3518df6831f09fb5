"""Set before anything else is imported, in the first conftest pytest loads:

- Without a GPU the Triton kernels run through Triton's interpreter.  TRITON_INTERPRET must be set before triton is
  first imported anywhere (triton 3.8 builds its standard library as compiled or interpreted functions at import, and
  transformers/peft may import triton during collection).
- Under pytest-xdist (CI: ``-n 2`` on 2 cores) each worker gets one OpenMP/BLAS thread, so that the workers do not
  oversubscribe the cores (the thread pools are sized when torch, numpy and scipy load their libraries)."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
