"""Composite Gauss-Legendre quadrature on many intervals at once (vectorised, deterministic).

Every integrand the fitter meets is analytic on the real line, so 20-point Gauss-Legendre panels no wider
than 0.5 integrate it to float64 rounding; the fitter cross-checks with scipy's adaptive quadrature.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_ORDER = 20
_PANEL_WIDTH = 0.5
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(_ORDER)
_UNIT_NODES = (_NODES + 1.0) / 2.0  # the nodes mapped to [0, 1]
_HALF_WEIGHTS = _WEIGHTS / 2.0  # (width * w) / 2 == width * (w / 2) exactly: halving is exact


@dataclass(frozen=True)
class Nodes:
    """Quadrature nodes over a list of intervals; ``segment[i]`` tells which interval node ``i`` lies in."""

    x: np.ndarray
    w: np.ndarray
    segment: np.ndarray
    n_segments: int

    def integrate(self, values: np.ndarray) -> np.ndarray:
        """Integral of ``values`` (sampled at ``x``) over each interval."""
        return np.bincount(self.segment, weights=self.w * values, minlength=self.n_segments)



_CACHED_INTERVALS = 32  # layouts of at most this many intervals are cached (the searches' knot intervals)


@lru_cache(maxsize=512)
def _cached_layout(panels: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    layout = _layout(np.frombuffer(panels, dtype=np.int64))
    for array in layout:
        array.flags.writeable = False
    return layout


def _layout(panels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For the panel counts per interval: each panel's interval, the panel count of its interval and its index
    within it (both as float64), and each node's interval.  The searches meet the same few layouts many times."""
    segment = np.repeat(np.arange(panels.size), panels)
    start = np.cumsum(panels) - panels
    panel_index = np.arange(segment.size) - np.repeat(start, panels)
    return segment, panels[segment].astype(np.float64), panel_index.astype(np.float64), np.repeat(segment, _ORDER)


def nodes(lo: np.ndarray, hi: np.ndarray) -> Nodes:
    """Composite Gauss-Legendre nodes on the intervals [lo[k], hi[k]] (empty where hi <= lo)."""
    lo = np.atleast_1d(np.asarray(lo, dtype=np.float64))
    hi = np.atleast_1d(np.asarray(hi, dtype=np.float64))
    length = np.fmax(hi - lo, 0.0)  # fmax: a NaN length is 0 (no panels)
    panels = np.ceil(length / _PANEL_WIDTH).astype(np.int64)  # >= 1 where length > 0
    small = lo.size <= _CACHED_INTERVALS
    segment, count, panel_index, node_segment = _cached_layout(panels.tobytes()) if small else _layout(panels)
    width = length[segment] / count
    left = lo[segment] + panel_index * width
    x = (left[:, None] + width[:, None] * _UNIT_NODES).ravel()
    w = (width[:, None] * _HALF_WEIGHTS).ravel()
    return Nodes(x, w, node_segment, lo.size)
