"""The timing helpers against known sleeps, their summary statistics, and the environment record."""

import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import benchmarks.env
    import benchmarks.timing

    return benchmarks


def test_time_call_measures_a_known_sleep_after_warmup(bench):
    calls = []

    def sleep():
        calls.append(None)
        time.sleep(0.02)

    t = bench.timing.time_call(sleep, "cpu", warmup=2, repeats=5)
    assert len(calls) == 7 and (t.warmup, t.repeats) == (2, 5)
    assert 0.02 <= t.min_s <= t.q1_s <= t.median_s <= t.q3_s <= t.max_s
    assert t.median_s < 0.2  # a loaded machine adds scheduling delay; a unit error (ms for s) would not pass


def test_time_call_tells_two_costs_apart(bench):
    short = bench.timing.time_call(lambda: time.sleep(0.005), "cpu", 0, 5)
    long = bench.timing.time_call(lambda: time.sleep(0.04), "cpu", 0, 3)
    assert long.min_s >= 0.04 > short.min_s >= 0.005


def test_summary_is_the_median_quartiles_and_extremes(bench):
    t = bench.timing.summarize([5.0, 1.0, 3.0, 2.0, 4.0], warmup=1)
    assert (t.median_s, t.q1_s, t.q3_s, t.min_s, t.max_s, t.repeats, t.warmup) == (3.0, 2.0, 4.0, 1.0, 5.0, 5, 1)
    two = bench.timing.summarize([0.1, 1.0], warmup=0)
    assert 0.1 <= two.q1_s <= two.median_s <= two.q3_s <= 1.0  # never below the fastest call
    assert set(t.to_json()) == {"median_s", "q1_s", "q3_s", "min_s", "max_s", "repeats", "warmup"}
    one = bench.timing.summarize([0.25], warmup=0)
    assert one.q1_s == one.median_s == one.q3_s == 0.25


def test_bad_timing_arguments_are_errors(bench):
    with pytest.raises(ValueError, match="repeats"):
        bench.timing.time_call(lambda: None, "cpu", 0, 0)
    with pytest.raises(ValueError, match="no timed calls"):
        bench.timing.summarize([], 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA events need a GPU")
def test_cuda_events_time_device_work_not_the_launch(bench):
    cycles = 50_000_000
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
    t = bench.timing.time_call(lambda: torch.cuda._sleep(cycles), "cuda", 1, 3)
    start = time.perf_counter()
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    assert t.median_s == pytest.approx(wall, rel=0.3)


def test_environment_names_the_device_and_versions(bench):
    env = bench.env.environment("cpu")
    assert env["device_name"].startswith("CPU: ") and env["cuda_capability"] is None
    assert env["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["versions"]["triton"] and env["versions"]["transformers"]
    assert env["git"]["commit"] is None or len(env["git"]["commit"]) == 40  # None outside a git checkout
