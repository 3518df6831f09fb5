"""``PackedDropout``: nn.Dropout whose backward keeps a 1-bit mask (``approxbp.ops.packed_dropout``)."""

from __future__ import annotations

from torch import Tensor, nn

from approxbp.ops.packed_dropout import packed_dropout


class PackedDropout(nn.Dropout):
    """nn.Dropout(p, inplace) with the same outputs, gradients and RNG draws; saves 1 bit per element for backward
    (torch saves a bool mask on CUDA, the scaled noise in x's dtype on CPU).  A subclass of nn.Dropout, so code
    reading ``self.dropout.p`` or testing ``isinstance(m, nn.Dropout)`` sees no difference."""

    @classmethod
    def from_dropout(cls, dropout: nn.Dropout) -> PackedDropout:
        new = cls(dropout.p, dropout.inplace)
        new.train(dropout.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return packed_dropout(x, self.p, self.training, self.inplace)
