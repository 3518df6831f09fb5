"""Converted models under the training machinery people use: activation checkpointing, torch.compile, and DDP /
FSDP2 data parallelism (two gloo processes on the CPU)."""

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from convert_models import build, grads, loss, max_relative_diff, output, relative_diff

from approxbp.conversion import convert
from approxbp.saved import record_saved


@pytest.mark.parametrize("name", ["llama", "bert", "timm-vit"])
def test_activation_checkpointing_gives_the_same_gradients(name):
    model, inputs = build(name)
    model.train()
    convert(model)
    checkpointed = copy.deepcopy(model)
    if name.startswith("timm"):
        checkpointed.set_grad_checkpointing()
    else:
        checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with record_saved(model) as plain:
        loss(model, inputs).backward()
    with record_saved(checkpointed) as recomputed:
        loss(checkpointed, inputs).backward()
    assert recomputed.bytes < plain.bytes  # checkpointing is on
    assert max_relative_diff(grads(checkpointed), grads(model)) == 0.0


@pytest.mark.parametrize("name,backend", [("bert", "aot_eager"), ("timm-vit", "aot_eager"), ("llama", "inductor")])
def test_torch_compile_fullgraph(name, backend):
    """Inductor compiles C++ on the CPU (about 12 s for the tiny LLaMA), so one model runs it; aot_eager traces the
    same graph with the custom ops' fake kernels and autograd formulas."""
    model, inputs = build(name)
    convert(model)
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend=backend, fullgraph=True)
    assert relative_diff(output(compiled, inputs), output(model, inputs)) <= 1e-5
    loss(compiled, inputs).backward()
    loss(model, inputs).backward()
    expected = grads(model)  # a compiled graph may give unused parameters (BERT's pooler) zero gradients
    assert max_relative_diff({k: v for k, v in grads(twin).items() if k in expected}, expected) <= 1e-5


def test_ddp_and_fsdp2_match_single_process(tmp_path):
    worker = Path(__file__).with_name("convert_ddp_worker.py")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "losses.json"
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    ranks = [subprocess.Popen([sys.executable, str(worker), str(out)], env={**env, "RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    logs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], logs[0][-3000:] + logs[1][-3000:]

    sys.path.insert(0, str(worker.parent))
    import convert_ddp_worker

    results = json.loads(out.read_text())
    for name in convert_ddp_worker.MODELS:
        single = convert_ddp_worker.train(name)
        assert single[-1] < single[0]  # it trains
        for engine in ("ddp", "fsdp2"):
            assert results[f"{name}/{engine}"] == pytest.approx(single, rel=1e-5)
