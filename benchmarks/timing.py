"""Time a callable: warm-up calls, then ``repeats`` timed calls, summarised by the median and the spread.

On CUDA each call is bracketed by CUDA events (device time, one synchronisation after all repeats); on CPU by
``time.perf_counter``.  Spread: the quartiles q1, q3 (``statistics.quantiles``, inclusive method: they lie within
[min, max] also for a few repeats) and min/max.
No cache flushing between calls: a size that fits in the last-level cache is timed warm.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` timed calls after ``warmup`` untimed ones."""

    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    max_s: float
    repeats: int
    warmup: int

    def to_json(self) -> dict:
        return asdict(self)


def summarize(seconds: list[float], warmup: int) -> Timing:
    """Median, quartiles and extremes of ``seconds`` (at least one value; one value is its own spread)."""
    if not seconds:
        raise ValueError("no timed calls to summarise")
    q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive") if len(seconds) > 1 else seconds * 3
    return Timing(statistics.median(seconds), q1, q3, min(seconds), max(seconds), len(seconds), warmup)


def _cpu_seconds(fn: Callable[[], object], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def _cuda_seconds(fn: Callable[[], object], repeats: int) -> list[float]:
    import torch

    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def time_call(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> Timing:
    """Call ``fn`` ``warmup`` times, then time ``repeats`` calls on ``device`` ("cuda" or "cpu")."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        return summarize(_cuda_seconds(fn, repeats), warmup)
    return summarize(_cpu_seconds(fn, repeats), warmup)
