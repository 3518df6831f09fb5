"""record_saved: unique storages, parameters excluded, and the same counts on the meta device."""

import pytest
import torch

from approxbp.saved import record_saved


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_linear_gelu_square(device):
    lin = torch.nn.Linear(8, 16, device=device)
    x = torch.randn(4, 8, device=device, requires_grad=True)
    with record_saved(lin) as r:
        y = torch.nn.functional.gelu(lin(x))
        (y * y).sum()
    # linear saves x (4*8 fp32), gelu saves its input (4*16), the square saves y twice: one storage
    assert r.count == 3 and r.bytes == 4 * (4 * 8 + 4 * 16 + 4 * 16)


def test_views_of_one_buffer_count_once_and_parameters_are_excluded():
    w = torch.nn.Parameter(torch.randn(6, 6))
    x = torch.randn(6, 6, requires_grad=True)
    with record_saved(w) as r:
        (x.t() * x[:3].repeat(2, 1) @ w).sum()
    # mul keeps x (through its view x.t()) and the repeated copy; matmul keeps the product and w (excluded)
    assert r.count == 3 and r.bytes == 3 * 6 * 6 * 4
