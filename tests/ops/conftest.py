"""Every op test starts from the same random state (TRITON_INTERPRET is set in tests/conftest.py)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
