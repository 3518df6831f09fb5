"""A fake run (FakeTensorMode, nothing allocated: how paper-scale models are profiled) saves exactly what a real CPU
run of the same small model saves: the same storages, bytes, dtypes, shapes, kinds, blocks and savers."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor

from approxbp.memory.measurement import measure
from approxbp.ops import approx_act


def signature(profile):
    return sorted((s.kind, -1 if s.block is None else s.block, s.nbytes, str(s.dtype), s.shape, tuple(s.describe()))
                  for s in profile.storages)


CASES = [(family, tuning, "fp32", "gpu") for family in ("vit", "llama", "roberta")
         for tuning in ("full", "lora", "frozen")]
CASES += [("llama", "lora-fa", "bf16", "gpu"), ("vit", "lora", "bf16", "gpu"), ("roberta", "full", "fp32", "cpu")]


@pytest.mark.parametrize(("family", "tuning", "dtype", "kernels"), CASES)
def test_fake_run_saves_what_a_real_run_saves(tiny_setting, family, tuning, dtype, kernels):
    setting = tiny_setting(family, tuning, dtype, kernels=kernels)
    real, fake = measure(setting), measure(replace(setting, fake=True))
    assert set(real.profiles) == set(fake.profiles) == {"baseline", "approx", "ms", "both"}
    for variant in real.profiles:
        assert signature(fake.profiles[variant]) == signature(real.profiles[variant]), variant
    assert real.conversions == fake.conversions


def test_fake_run_leaves_no_fake_step_table_in_the_ops_cache(tiny_setting):
    """A step table built under the fake mode must not stay in the ops' cache: later real runs would get it."""
    approx_act._TABLE_CACHE.clear()
    measure(replace(tiny_setting("vit"), fake=True))
    assert not any(isinstance(t, FakeTensor) for t in approx_act._TABLE_CACHE.values())
    x = torch.randn(8, requires_grad=True)
    approx_act.regelu2(x).sum().backward()
    assert torch.isfinite(x.grad).all()
