"""Every op test starts from the same random state (Triton kernels on CPU tensors run in Triton's interpreter, in this
process: approxbp.kernels.launch; the ``device`` fixture of tests/conftest.py adds CUDA where there is a GPU)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
