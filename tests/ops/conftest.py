"""Op tests run the Triton kernels through Triton's interpreter when there is no GPU.  TRITON_INTERPRET is read when
a kernel is defined, so it is set here, before any ``approxbp.kernels`` module is imported."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
