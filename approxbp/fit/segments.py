"""Globally optimal partition of ordered cells into contiguous segments (dynamic programming).

Each cell carries exact sufficient statistics of the values to be fitted: weight W, first moment S1 and
second moment S2 (weighted sums of h' and h'^2).  A segment's best level is S1/W and its cost
S2 - S1^2/W, so the cost of any partition is exact; the DP finds the best one over all cell borders in
O(segments * cells^2), independent of how many samples or quadrature nodes made the statistics.
"""

from __future__ import annotations

import numpy as np


def optimal_partition(weight: np.ndarray, s1: np.ndarray, s2: np.ndarray, n_segments: int) -> np.ndarray:
    """Cell indices of the ``n_segments - 1`` inner borders (border k lies before cell ``cuts[k]``)."""
    m = weight.size
    occupied = weight > 0
    if np.count_nonzero(occupied) < n_segments:
        raise ValueError(f"{np.count_nonzero(occupied)} non-empty bins cannot make {n_segments} levels")
    pw, p1, p2 = (np.concatenate([[0.0], np.cumsum(v)]) for v in (weight, s1, s2))
    # cost[i, j]: segment of cells i..j-1 (i < j); infinite where empty or reversed
    w = pw[None, :] - pw[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = (p2[None, :] - p2[:, None]) - (p1[None, :] - p1[:, None]) ** 2 / w
    cost = np.where(w > 0, np.maximum(cost, 0.0), np.inf)
    best = cost[0].copy()  # best[j]: cells 0..j-1 in one segment
    choice = np.zeros((n_segments, m + 1), dtype=np.int64)
    for seg in range(1, n_segments):
        total = best[:, None] + cost
        choice[seg] = np.argmin(total, axis=0)
        best = total[choice[seg], np.arange(m + 1)]
    cuts = np.empty(n_segments - 1, dtype=np.int64)
    end = m
    for seg in range(n_segments - 1, 0, -1):
        end = choice[seg, end]
        cuts[seg - 1] = end
    return cuts
