"""Per-layer calibration (beyond the paper): fit each Approx-BP activation's table to the pre-activations it sees.

``PreactivationHistogram`` streams any number of batches into bounded memory: a fixed grid of bins and, per bin,
the exact count, sum h'(x) and sum h'(x)^2 (float64, on the tensors' device; h' by autograd of the exact activation
in float64).  That is the empirical fitter's sufficient statistic (``approxbp.fit.Histogram``), so the fitted table
is the exact optimum of the sample mean of (h' - step)^2 over all tables whose borders lie on the grid; the grid is
uniform on [-R, R] (R = min(target tail, 16), plus one bin on each side), so borders are resolved to 2R / bins.
"""

from __future__ import annotations

import numpy as np
import torch

from approxbp.fit import FitResult, Histogram, fit
from approxbp.ops.approx_act import activation_reference
from approxbp.targets import TARGET_NAMES, get_target

GRID_BINS = 4096
GRID_RADIUS_MAX = 16.0


def exact_derivative(x: torch.Tensor, target: str) -> torch.Tensor:
    """h'(x) in float64 by autograd of the exact activation."""
    with torch.enable_grad():
        xd = x.detach().to(torch.float64).requires_grad_(True)
        (d,) = torch.autograd.grad(activation_reference(xd, target).sum(), xd)
    return d


class PreactivationHistogram:
    """Streaming sufficient statistics of h' over the pre-activations of one layer."""

    def __init__(self, target: str, bins: int = GRID_BINS):
        if target not in TARGET_NAMES:
            raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGET_NAMES)}")
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        radius = min(get_target(target).tail, GRID_RADIUS_MAX)
        self.target, self.inner = target, torch.linspace(-radius, radius, bins + 1, dtype=torch.float64)
        self.count = self.sum_d = self.sum_d2 = None
        self.nonfinite = 0

    def update(self, x: torch.Tensor) -> None:
        """Add the elements of ``x`` (any shape, float dtype); NaN/inf elements are counted apart and skipped."""
        if not x.is_floating_point():
            raise TypeError(f"pre-activations must be floating point, got {x.dtype}")
        flat = x.detach().reshape(-1)
        finite = torch.isfinite(flat)
        self.nonfinite += int((~finite).sum())
        flat = flat[finite]
        if self.count is None:
            size = self.inner.numel() + 1
            self.inner = self.inner.to(flat.device)
            self.count, self.sum_d, self.sum_d2 = (torch.zeros(size, dtype=torch.float64, device=flat.device)
                                                   for _ in range(3))
        if flat.numel() == 0:
            return
        d = exact_derivative(flat, self.target)
        index = torch.bucketize(flat.to(torch.float64), self.inner, right=True)
        self.count.index_add_(0, index, torch.ones_like(d))
        self.sum_d.index_add_(0, index, d)
        self.sum_d2.index_add_(0, index, d * d)

    @property
    def samples(self) -> int:
        return 0 if self.count is None else int(self.count.sum())

    def histogram(self) -> Histogram:
        """The fitter's Histogram over the occupied bins (empty bins merged away: they carry no weight)."""
        if not self.samples:
            raise ValueError(f"no finite pre-activations were recorded for this {self.target} layer")
        edges = np.concatenate([[-np.inf], self.inner.cpu().numpy(), [np.inf]])
        count, s1, s2 = (v.cpu().numpy() for v in (self.count, self.sum_d, self.sum_d2))
        keep = count > 0
        # bin k = [edges[k], edges[k+1]); dropping empty bins keeps each kept bin's left edge
        left = edges[:-1][keep]
        return Histogram(self.target, np.concatenate([[-np.inf], left[1:], [np.inf]]), count[keep], s1[keep],
                         s2[keep])

    def fit(self, bits: int = 2) -> FitResult:
        return fit(self.target, bits, "empirical", samples=self.histogram())
