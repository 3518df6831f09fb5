"""Per-layer calibration (beyond the paper): fit each Approx-BP activation's table to the pre-activations it sees.

``calibrate(model, batches)`` observes every activation that ``approxbp.convert`` would convert and returns one
``empirical`` FitResult per layer; ``convert(model, tables=...)`` (or ``convert(model, calibration_data=batches)``)
uses them.

``PreactivationHistogram`` streams any number of batches into bounded memory: a fixed grid of bins and, per bin,
the exact count, sum h'(x) and sum h'(x)^2 (float64, on the tensors' device; h' by autograd of the exact activation
in float64).  That is the empirical fitter's sufficient statistic (``approxbp.fit.Histogram``), so the fitted table
is the exact optimum of the sample mean of (h' - step)^2 over all tables whose borders lie on the grid.  The grid is
uniform on [-R, R] plus one open bin on each side; R is set by the first batch, twice its largest |x| after
dropping the outer 0.1% on each side (at most min(target tail, 16): beyond the tail h' is constant), so borders are
resolved to 2R / bins where that layer's inputs are, whatever their scale.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from approxbp.fit import FitResult, Histogram, fit
from approxbp.ops.approx_act import activation_reference
from approxbp.targets import check_target, get_target

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
        check_target(target)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        self.target, self.bins, self.max_radius = target, bins, min(get_target(target).tail, GRID_RADIUS_MAX)
        self.inner = self.count = self.sum_d = self.sum_d2 = None
        self.nonfinite = 0

    def update(self, x: torch.Tensor) -> None:
        """Add the elements of ``x`` (any shape, float dtype); NaN/inf elements are counted apart and skipped."""
        if not x.is_floating_point():
            raise TypeError(f"pre-activations must be floating point, got {x.dtype}")
        flat = x.detach().reshape(-1)
        finite = torch.isfinite(flat)
        self.nonfinite += int((~finite).sum())
        flat = flat[finite]
        if flat.numel() == 0:
            return
        if self.count is None:
            self._start(flat)
        d = exact_derivative(flat, self.target)
        index = torch.bucketize(flat.to(torch.float64), self.inner, right=True)
        self.count.index_add_(0, index, torch.ones_like(d))
        self.sum_d.index_add_(0, index, d)
        self.sum_d2.index_add_(0, index, d * d)

    def _start(self, first: torch.Tensor) -> None:
        sample = first[:: max(1, first.numel() // 1_000_000)].to(torch.float64)  # quantile() takes <= 2^24 values
        lo, hi = torch.quantile(sample, torch.tensor([0.001, 0.999], dtype=torch.float64, device=sample.device))
        radius = min(max(2 * float(max(-lo, hi)), 1e-6), self.max_radius)
        self.inner = torch.linspace(-radius, radius, self.bins + 1, dtype=torch.float64, device=first.device)
        self.count, self.sum_d, self.sum_d2 = (torch.zeros(self.bins + 2, dtype=torch.float64, device=first.device)
                                               for _ in range(3))

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


def _run(model: torch.nn.Module, batch) -> None:
    if isinstance(batch, Mapping):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


def calibrate(model: torch.nn.Module, batches: Iterable, bits: int = 2, *, approx: str = "auto",
              bins: int = GRID_BINS, progress: bool = False, example_inputs=None) -> dict[str, FitResult]:
    """Fit an ``empirical`` table to every activation ``approxbp.convert(model, approx=approx,
    example_inputs=example_inputs)`` would convert, from the pre-activations it sees on ``batches`` (each a tensor, a
    tuple of positional arguments or a dict of keyword arguments for ``model``).  Returns {activation name:
    FitResult}, the ``tables=`` argument of ``convert``; ``example_inputs`` turns on the generic path for the modules
    no rule covers, as in ``convert``.

    ``model`` must not be converted yet (its activations are observed with forward pre-hooks; for a gated MLP the
    hook on ``act`` sees the gate).  It runs under ``torch.no_grad()`` in its current train/eval mode; memory stays
    bounded by one batch plus 3 x (bins + 2) float64 numbers per activation.  NaN/inf pre-activations are dropped
    and reported in one warning (layer: count); a layer that saw no finite one is a ValueError naming it."""
    from approxbp.conversion.plan import activation_target
    from approxbp.conversion.planner import check_model, is_converted, plan_activations

    check_model(model, "approxbp.calibrate")
    check_batches(batches)
    check_not_meta(model)
    if is_converted(model):
        raise ValueError("calibrate needs the unconverted model (its activations are observed); approxbp.revert first")
    # which activations convert would convert; the model is untouched
    names = plan_activations(model, approx, example_inputs=example_inputs)
    modules = dict(model.named_modules())
    histograms = {name: PreactivationHistogram(activation_target(modules[name]), bins) for name in names}
    hooks = [modules[name].register_forward_pre_hook(lambda _m, args, h=h: h.update(args[0]))
             for name, h in histograms.items()]
    seen = 0
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="calibrating", unit="batch", disable=not progress):
                _run(model, batch)
                seen += 1
    finally:
        for hook in hooks:
            hook.remove()
    if not seen:
        raise ValueError("calibrate got no batches")
    report_nonfinite(histograms)
    return {name: h.fit(bits) for name, h in histograms.items()}


def check_batches(batches) -> None:
    """TypeError for a single batch given as ``batches`` (iterating it would feed its rows or keys to the model)."""
    if isinstance(batches, torch.Tensor):
        raise TypeError(f"calibrate expects an iterable of batches, got a single tensor of shape {tuple(batches.shape)}"
                        "; pass [tensor] for one batch")
    if isinstance(batches, Mapping):
        raise TypeError(f"calibrate expects an iterable of batches, got a single {type(batches).__name__} of keyword "
                        "arguments; pass [dict] for one batch")
    if not isinstance(batches, Iterable):
        raise TypeError(f"calibrate expects an iterable of batches (tensors, tuples or dicts), got "
                        f"{type(batches).__name__}")


def check_not_meta(model: torch.nn.Module) -> None:
    """ValueError for a model with meta-device parameters or buffers: they hold no values to run on."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    meta = [name for name, t in tensors if t.is_meta]
    if meta:
        raise ValueError(f"calibrate needs a model with real weights, but {len(meta)} of its {len(tensors)} parameters/"
                         f"buffers are on the meta device (first: {meta[0]}); load the weights (e.g. to_empty + "
                         "load_state_dict) first")


def report_nonfinite(histograms: Mapping[str, PreactivationHistogram]) -> None:
    """ValueError naming a layer that saw no finite pre-activation; one warning naming every layer whose NaN/inf
    pre-activations were dropped, with the counts (the tables are fitted to the finite ones only)."""
    for name, h in histograms.items():
        if not h.samples:
            raise ValueError(f"calibrate: activation {name} saw no finite pre-activation ({h.nonfinite} NaN/inf "
                             "values); check the model's weights and inputs")
    dropped = [f"{name}: {h.nonfinite} of {h.nonfinite + h.samples}" for name, h in histograms.items() if h.nonfinite]
    if dropped:
        warnings.warn("calibrate dropped NaN/inf pre-activations (tables fitted to the finite ones): "
                      + "; ".join(dropped), stacklevel=3)
