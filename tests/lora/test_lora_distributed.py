"""The packed LoRA and dropout paths (``convert(lora="packed", dropout="packed")``) under the training machinery,
against peft's modules under the same machinery and seeds (tiny LoRA models, dropout 0.1 in the adapters and every
nn.Dropout): DDP and FSDP2 (two gloo processes on the CPU, each training on its own batch), torch.utils.checkpoint
around every block, and torch.compile of the whole model.  (HF's gradient checkpointing and the compile of one layer
are in test_lora_exact.py.)

Run as a script (``python test_lora_distributed.py OUT RANK WORLD``), this file is one rank: it meets the others
through the file ``OUT.store`` (no port to race for) and writes ``{model/engine/variant: {"losses", "draws",
"grads"}}`` to ``OUT.<rank>`` with torch.save."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lora_models import lora_model, loss, relative, step
from torch import nn
from torch.utils.checkpoint import checkpoint

from approxbp.conversion import convert

MODELS = ("llama", "roberta-mlm")
ENGINES = ("ddp", "fsdp2", "fsdp2+checkpointing")
VARIANTS = ("peft", "packed")
STEPS = 3
VOCAB = 64  # the tiny models' (tests/convert/convert_models.py)


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    inner = model.base_model.model
    return inner.model.layers if hasattr(inner, "model") else inner.roberta.encoder.layer


def wrap(model: torch.nn.Module, engine: str) -> torch.nn.Module:
    """DDP, or FSDP2 sharding every block and the rest (with HF's non-reentrant gradient checkpointing of every
    block: recomputed in the backward, its parameters all-gathered again)."""
    if engine == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    if engine.endswith("+checkpointing"):
        model.base_model.model.gradient_checkpointing_enable({"use_reentrant": False})
    for block in blocks(model):
        fully_shard(block)
    return fully_shard(model)


def full(grad: torch.Tensor) -> torch.Tensor:
    """The whole gradient: FSDP2 keeps each rank's shard as a DTensor."""
    return grad.full_tensor() if hasattr(grad, "full_tensor") else grad.detach().clone()


def train(name: str, engine: str, variant: str, rank: int, world: int) -> dict:
    """STEPS SGD steps of the LoRA model ``name`` (``variant`` "packed": converted with MS-BP and the packed paths,
    exact in fp32) under ``engine`` on this rank's batch, seeded 1000 step + rank before each forward: the global
    mean losses, this rank's next random numbers after each backward and the first step's all-reduced gradients."""
    model, _ = lora_model(name, 0.1)
    if variant == "packed":
        report = convert(model, approx=None)
        kinds = {c.kind for c in report.packed}  # LLaMA has no nn.Dropout outside the adapters
        assert kinds == ({"lora"} if name == "llama" else {"lora", "dropout"}), report
    wrapped = wrap(model, engine)
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=1e-3)
    inputs = {"input_ids": torch.randint(1, VOCAB, (2, 8), generator=torch.Generator().manual_seed(rank))}
    losses, draws, grads = [], [], None
    for number in range(STEPS):
        torch.manual_seed(1000 * number + rank)
        value = loss(wrapped, inputs)
        value.backward()
        draws.append(torch.rand(4))
        if grads is None:
            kept = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            sharded = {type(g).__name__ == "DTensor" for g in kept.values()}
            assert sharded == {engine != "ddp"}, sharded  # FSDP2 shards every trainable parameter
            grads = {n: full(g) for n, g in kept.items()}
        optimizer.step()
        optimizer.zero_grad()
        total = value.detach().clone()
        torch.distributed.all_reduce(total)
        losses.append(total.item() / world)
    return {"losses": losses, "draws": torch.stack(draws), "grads": grads}


def main(out: str, rank: int, world: int) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{out}.store", rank=rank, world_size=world)
    results = {f"{name}/{engine}/{variant}": train(name, engine, variant, rank, world)
               for name in MODELS for engine in ENGINES for variant in VARIANTS}
    torch.save(results, f"{out}.{rank}")
    torch.distributed.barrier()  # no rank tears gloo down while the other is still in a collective
    torch.distributed.destroy_process_group()


def run_ranks(out: Path, world: int = 2, timeout: float = 240.0) -> None:
    """This file as ``world`` gloo ranks; fails at once when a rank fails (its peer would wait in a collective) and
    after ``timeout`` seconds, so that a hang fails rather than blocks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [out.with_name(f"rank{rank}.log") for rank in range(world)]
    ranks = []
    try:
        for rank, log in enumerate(logs):
            with log.open("w") as f:
                ranks.append(subprocess.Popen([sys.executable, __file__, str(out), str(rank), str(world)],
                                              env=env, stdout=f, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while any(r.poll() is None for r in ranks) and not any(r.poll() for r in ranks) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()
    codes = [rank.returncode for rank in ranks]
    assert codes == [0] * world, f"return codes {codes} (-9: killed after {timeout} s or a failed peer)\n" + \
        "\n".join(log.read_text()[-3000:] for log in logs)


def test_packed_paths_match_peft_under_ddp_and_fsdp2(tmp_path):
    out = tmp_path / "results"
    run_ranks(out)
    per_rank = [torch.load(f"{out}.{rank}") for rank in range(2)]
    for name in MODELS:
        for engine in ENGINES:
            peft = [r[f"{name}/{engine}/peft"] for r in per_rank]
            packed = [r[f"{name}/{engine}/packed"] for r in per_rank]
            key = f"{name}/{engine}"
            for ours, theirs in zip(packed, peft, strict=True):
                assert torch.equal(ours["draws"], theirs["draws"]), key  # the same masks drawn on every rank
                assert ours["losses"] == pytest.approx(theirs["losses"], rel=1e-5), key
                assert ours["grads"].keys() == theirs["grads"].keys() and ours["grads"], key
                assert max(relative(ours["grads"][k], theirs["grads"][k]) for k in theirs["grads"]) <= 1e-5, key
            assert not torch.equal(peft[0]["draws"], peft[1]["draws"]), key  # the ranks drew different masks
            for k, g in packed[0]["grads"].items():  # all-reduced: every rank holds the same gradient
                assert torch.equal(g, packed[1]["grads"][k]), (key, k)


class Checkpointed(nn.Module):
    """``block`` under torch.utils.checkpoint: its forward runs again in the backward, RNG state restored."""

    def __init__(self, block: nn.Module, reentrant: bool):
        super().__init__()
        self.block, self.reentrant = block, reentrant

    def forward(self, *args, **kwargs):
        return checkpoint(partial(self.block, **kwargs), *args, use_reentrant=self.reentrant)  # reentrant: no kwargs


def assert_same_step(got: tuple, expected: tuple) -> None:
    (value, grads, _, draws), (value0, grads0, _, draws0) = got, expected
    assert torch.equal(draws, draws0)  # the same random numbers drawn in all: the same masks
    assert value == pytest.approx(value0, rel=1e-5)
    assert grads.keys() == grads0.keys() and grads0
    assert max(relative(grads[k], grads0[k]) for k in grads0) <= 1e-5


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_blocks_recompute_the_same_masks(reentrant):
    """RoBERTa: packed masks in the adapters and the hidden/attention dropouts.  A recomputed forward that drew other
    masks than the first would give other gradients than peft's model under the same checkpointing, and than the
    packed model without it."""
    model, inputs = lora_model("roberta-mlm", 0.1)
    packed = copy.deepcopy(model)
    convert(packed, approx=None)
    plain = step(packed, inputs)
    for twin in (model, packed):
        layers = twin.base_model.model.roberta.encoder.layer
        for i, block in enumerate(layers):
            layers[i] = Checkpointed(block, reentrant)
        if reentrant:  # the embeddings are frozen: the reentrant variant needs an input that requires grad
            twin.base_model.model.enable_input_require_grads()
    got = step(packed, inputs)
    assert_same_step(got, step(model, inputs))
    assert got[2] < plain[2]  # checkpointing is on: the blocks keep only their inputs
    unwrapped = {k.replace(".block.", "."): g for k, g in got[1].items()}
    assert_same_step((got[0], unwrapped, None, got[3]), plain)


def test_compiled_model_matches_peft_eager():
    """torch.compile(fullgraph, aot_eager: dynamo and AOT autograd, eager RNG) of a whole converted RoBERTa."""
    model, inputs = lora_model("roberta-mlm", 0.1)
    packed = copy.deepcopy(model)
    convert(packed, approx=None)
    packed.compile(backend="aot_eager", fullgraph=True)
    assert_same_step(step(packed, inputs), step(model, inputs))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
