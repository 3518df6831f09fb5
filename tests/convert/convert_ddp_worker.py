"""One rank of test_convert_training.py's distributed check: trains converted tiny models for a few SGD steps on its
half of the batch under DDP and FSDP2 (gloo, CPU) and, on rank 0, writes the global losses as JSON to argv[1].

Run with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set; ``train`` is also the single-process reference."""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert_models

from approxbp.conversion import convert

MODELS = ("llama", "bert")
STEPS = 3


def batch(name: str) -> dict:
    """4 samples, so that each of 2 ranks gets 2."""
    _, first = convert_models.build(name, seed=0)
    _, second = convert_models.build(name, seed=1)
    return {k: torch.cat([first[k], second[k]]) for k in first}


def mean_loss(model, inputs: dict) -> torch.Tensor:
    return convert_models.output(model, inputs).square().mean()


def train(name: str, wrap=None, rank: int = 0, world: int = 1) -> list[float]:
    """Global mean loss before each of STEPS SGD steps of a converted model (shard ``rank`` of ``world``)."""
    model, _ = convert_models.build(name)
    model.train()
    convert(model)
    wrapped = wrap(model) if wrap else model
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.5)
    inputs = {k: v[rank::world] for k, v in batch(name).items()}
    losses = []
    for _ in range(STEPS):
        loss = mean_loss(wrapped, inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        total = loss.detach().clone()
        if world > 1:
            torch.distributed.all_reduce(total)
        losses.append(total.item() / world)
    return losses


def ddp(model):
    unused = getattr(model, "pooler", None) is not None  # BERT's pooler does not feed the loss
    return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=unused)


def fsdp2(model):
    from torch.distributed.fsdp import fully_shard

    blocks = model.model.layers if hasattr(model, "model") else model.encoder.layer
    for block in blocks:
        fully_shard(block)
    return fully_shard(model)


def main(out: str) -> None:
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    results = {}
    for name in MODELS:
        results[f"{name}/ddp"] = train(name, ddp, rank, world)
        results[f"{name}/fsdp2"] = train(name, fsdp2, rank, world)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    torch.distributed.barrier()  # no rank tears gloo down while the other is still in a collective
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
