"""The empirical objective: mean over real pre-activations x_i of (h'(x_i) - S(x_i))^2.

Samples are reduced once to a histogram of exact sufficient statistics per bin (count, sum h'(x), sum h'(x)^2),
so the fit costs the same for a thousand samples or a billion, and the objective of any table whose borders lie
on bin edges is the exact sample mean.  The dynamic program then returns the global optimum over all such
tables; with equal-mass (quantile) bins the border resolution is finest where the inputs are densest.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from approxbp.fit.quadrature import nodes
from approxbp.fit.segments import optimal_partition
from approxbp.targets import Target

DEFAULT_BINS = 2048


@dataclass(frozen=True)
class Histogram:
    """Per-bin statistics of h'(x) for one target; bin k is [edges[k], edges[k+1])."""

    target: str
    edges: np.ndarray  # bins + 1 increasing, the outer two may be -inf / inf
    count: np.ndarray
    sum_d: np.ndarray  # sum of h'(x) over the bin's samples
    sum_d2: np.ndarray  # sum of h'(x)^2

    @classmethod
    def from_samples(cls, target: Target, samples: np.ndarray, bins: int = DEFAULT_BINS) -> Histogram:
        if np.iscomplexobj(samples):
            raise ValueError(f"samples must be real numbers, got {np.asarray(samples).dtype}")
        x = np.asarray(samples, dtype=np.float64).ravel()
        if x.size == 0 or not np.all(np.isfinite(x)):
            raise ValueError("samples must be a non-empty array of finite numbers")
        inner = np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
        edges = np.concatenate([[-np.inf], inner, [np.inf]])
        index = np.searchsorted(inner, x, side="right")
        d = target.df(x)
        m = edges.size - 1
        return cls(target.name, edges, np.bincount(index, minlength=m).astype(np.float64),
                   np.bincount(index, weights=d, minlength=m), np.bincount(index, weights=d * d, minlength=m))

    @classmethod
    def from_counts(cls, target: Target, edges: np.ndarray, counts: np.ndarray) -> Histogram:
        """A counts-only histogram, taking the samples of each bin as spread uniformly over it."""
        edges = np.asarray(edges, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.float64)
        if edges.ndim != 1 or counts.shape != (edges.size - 1,) or counts.size == 0:
            raise ValueError(f"histogram needs edges of length bins + 1 and counts of length bins, "
                             f"got {edges.shape} and {counts.shape}")
        if not (np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0)):
            raise ValueError("histogram edges must be finite and strictly increasing")
        if np.any(counts < 0) or not np.all(np.isfinite(counts)) or counts.sum() <= 0:
            raise ValueError("histogram counts must be finite, non-negative and not all zero")
        q = nodes(edges[:-1], edges[1:])
        width = np.diff(edges)
        d = target.df(q.x)
        return cls(target.name, edges, counts, counts * q.integrate(d) / width, counts * q.integrate(d * d) / width)


def _unreadable(path: Path, kind: str, err: BaseException) -> ValueError:
    """One line naming the file and what it should have been (the loaders' own messages span lines)."""
    first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else "empty or truncated"
    return ValueError(f"{path}: not a readable {kind} ({type(err).__name__}: {first})")


def load_samples(path: str | Path, target: Target, bins: int = DEFAULT_BINS) -> Histogram:
    """Samples from a .npy or .pt array, or a histogram .npz with ``edges`` and ``counts``; a garbage, truncated or
    empty file is a one-line ValueError naming it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            samples = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise _unreadable(path, ".npy array", err) from None
        return Histogram.from_samples(target, samples, bins)
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                if not {"edges", "counts"} <= set(data.files):
                    raise ValueError(f"{path}: a histogram .npz needs arrays 'edges' and 'counts', has {data.files}")
                edges, counts = data["edges"], data["counts"]
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            raise _unreadable(path, ".npz archive", err) from None
        return Histogram.from_counts(target, edges, counts)
    if suffix == ".pt":
        import torch  # only this input format needs torch

        try:
            tensor = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as err:
            raise _unreadable(path, ".pt tensor file", err) from None
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor, found {type(tensor).__name__}")
        if tensor.is_complex():
            raise ValueError(f"samples must be real numbers, got {tensor.dtype}")
        return Histogram.from_samples(target, tensor.detach().double().numpy(), bins)
    raise ValueError(f"{path}: unsupported samples file; use .npy, .pt or a histogram .npz")


@dataclass(frozen=True)
class EmpiricalFit:
    thresholds: np.ndarray
    levels: np.ndarray
    value: float  # exact mean squared error over the samples
    border_optimal: bool  # no single border move to a neighbouring bin edge lowers the objective


def _cost(hist: Histogram, cuts: np.ndarray) -> tuple[np.ndarray, float]:
    bounds = np.concatenate([[0], cuts, [hist.count.size]])
    w, s1, s2 = (np.add.reduceat(v, bounds[:-1]) for v in (hist.count, hist.sum_d, hist.sum_d2))
    levels = s1 / w
    return levels, float(np.sum(s2 - 2 * levels * s1 + levels**2 * w) / hist.count.sum())


def fit_histogram(hist: Histogram, bits: int) -> EmpiricalFit:
    n = 2**bits - 1
    cuts = optimal_partition(hist.count, hist.sum_d, hist.sum_d2, n + 1)
    levels, value = _cost(hist, cuts)
    neighbours = []
    for k in range(n):
        for move in (-1, 1):
            moved = cuts.copy()
            moved[k] += move
            bounds = np.concatenate([[0], moved, [hist.count.size]])
            if np.all(np.diff(bounds) > 0) and np.all(np.add.reduceat(hist.count, bounds[:-1]) > 0):
                neighbours.append(_cost(hist, moved)[1])
    optimal = all(v >= value - 1e-12 * abs(value) for v in neighbours)
    return EmpiricalFit(hist.edges[cuts], levels, value, optimal)
