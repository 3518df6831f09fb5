"""MS-BP norm layers: the backward works from the output, so the layer shares its activation memory with the next."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from approxbp.ops.ms_norm import ms_layer_norm, ms_layer_norm_affine, ms_rms_norm


def _shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


class MSLayerNorm(nn.Module):
    """LayerNorm without affine parameters that saves only its output (shared) and one fp32 rstd per row.
    Fold a pretrained gamma/beta into the following linear layer(s) first."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5):
        super().__init__()
        self.normalized_shape, self.eps = _shape(normalized_shape), eps

    def forward(self, x: Tensor) -> Tensor:
        return ms_layer_norm(x, self.normalized_shape, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class MSRMSNorm(nn.Module):
    """RMSNorm without affine parameters that saves only its output (shared) and one fp32 rstd per row."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-6):
        super().__init__()
        self.normalized_shape, self.eps = _shape(normalized_shape), eps

    def forward(self, x: Tensor) -> Tensor:
        return ms_rms_norm(x, self.normalized_shape, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class MSLayerNormAffine(nn.Module):
    """Affine LayerNorm (post-LN blocks) that saves its output z = weight * y + bias and recovers y from it.
    Gradients are exact for every weight, zero included: features where y cannot be recovered accurately from z
    have y saved as well (``approxbp.ops.ms_norm`` documents the guard and its cost)."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.normalized_shape, self.eps = _shape(normalized_shape), eps
        self.weight = nn.Parameter(torch.ones(self.normalized_shape, device=device, dtype=dtype))
        bias_param = nn.Parameter(torch.zeros(self.normalized_shape, device=device, dtype=dtype)) if bias else None
        self.register_parameter("bias", bias_param)

    @classmethod
    def from_layer_norm(cls, ln: nn.LayerNorm) -> MSLayerNormAffine:
        """A copy of an affine ``nn.LayerNorm`` (same shape, eps, parameter values, device, dtype and
        ``requires_grad``: frozen parameters stay frozen)."""
        if ln.weight is None:
            raise ValueError("from_layer_norm needs an affine nn.LayerNorm (elementwise_affine=True)")
        new = cls(ln.normalized_shape, ln.eps, ln.bias is not None, ln.weight.device, ln.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(ln.weight)
            if ln.bias is not None:
                new.bias.copy_(ln.bias)
        new.weight.requires_grad_(ln.weight.requires_grad)
        if ln.bias is not None:
            new.bias.requires_grad_(ln.bias.requires_grad)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return ms_layer_norm_affine(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, bias={self.bias is not None}"
