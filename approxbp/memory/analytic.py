"""The analytic minimum: what a perfect implementation of a block's layers keeps for backward, per token.

A perfect implementation keeps every tensor that the backward formulas of the method read exactly once (shared
between ops, MS-BP style, where two ops read one tensor), in the activation dtype, with per-row statistics in fp32
(LayerNorm: mean and rstd; RMSNorm and MS-BP norms: rstd); it recomputes nothing except inside one fused op; its
dropout masks are regenerated from the RNG state (no bytes), so a LoRA adapter with dropout keeps the layer's input,
not its dropped copy; its attention is flash attention (q, k, v, output and one fp32 log-sum-exp per head).
Approx-BP keeps its packed codes (bits/8 bytes per element) instead of the activation input.

For gated MLPs (LLaMA's silu(gate) * up) the fused op needs {gate, up} both with the exact derivative and with the
Approx-BP step (h(gate) is needed exactly for d_up, and gate gives both h and its code), so Approx-BP's minimum
equals the baseline's: it saves memory only against an unfused implementation, which keeps silu(gate) as well.

The block is a middle block whose input requires grad.  Which linear layers keep their input, and which LoRA B
keeps A's output (rank r per token), is read from the model itself (``trainable_roles``).  Tensors are charged to
kinds with the profiler's rule (``approxbp.memory.kinds``): the first kind among the ops that read the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from approxbp.memory.kinds import KINDS, is_lora_wrapper

FAMILIES = {"vit": "pre_ln", "llama": "pre_rms", "bert": "post_ln", "roberta": "post_ln"}

# role -> candidate paths of the linear layer inside one block
_LINEARS = {
    "pre_ln": {"q": ("attention.q_proj", "attention.attention.query"), "k": ("attention.k_proj",
               "attention.attention.key"), "v": ("attention.v_proj", "attention.attention.value"),
               "o": ("attention.o_proj", "attention.output.dense"), "fc1": ("mlp.fc1", "intermediate.dense"),
               "fc2": ("mlp.fc2", "output.dense")},
    "pre_rms": {"q": ("self_attn.q_proj",), "k": ("self_attn.k_proj",), "v": ("self_attn.v_proj",),
                "o": ("self_attn.o_proj",), "gate": ("mlp.gate_proj",), "up": ("mlp.up_proj",),
                "down": ("mlp.down_proj",)},
    "post_ln": {"q": ("attention.self.query",), "k": ("attention.self.key",), "v": ("attention.self.value",),
                "o": ("attention.output.dense",), "fc1": ("intermediate.dense",), "fc2": ("output.dense",)},
}
_STATS = 4  # bytes of one fp32 per-row statistic


@dataclass(frozen=True)
class BlockShape:
    """What the minimum depends on: sizes, the activation element size, who trains."""

    layout: str  # "pre_ln", "pre_rms" or "post_ln"
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    element: int  # bytes per activation element
    keeps_input: frozenset[str]  # linear roles whose input is kept (weight or LoRA A trains)
    lora_ranks: tuple[tuple[str, int], ...]  # (role, r) for LoRA layers whose B trains


@dataclass(frozen=True)
class Need:
    """One tensor the block keeps: bytes per token and the kinds of the ops that read it (empty: not kept)."""

    name: str
    bytes_per_token: float
    readers: tuple[str, ...]

    @property
    def kind(self) -> str:
        return min(self.readers, key=KINDS.index)


def trainable_roles(block: nn.Module, layout: str) -> tuple[frozenset[str], tuple[tuple[str, int], ...]]:
    """(roles whose input is kept, (role, rank) of LoRA layers whose B trains) in ``block``."""
    keeps, ranks = set(), []
    for role, paths in _LINEARS[layout].items():
        module = next(block.get_submodule(p) for p in paths if _has(block, p))
        if is_lora_wrapper(module):
            adapters_a = list(module.lora_A.values())
            if module.base_layer.weight.requires_grad or any(a.weight.requires_grad for a in adapters_a):
                keeps.add(role)
            if any(b.weight.requires_grad for b in module.lora_B.values()):
                ranks.append((role, sum(a.out_features for a in adapters_a)))
        elif module.weight.requires_grad:
            keeps.add(role)
    return frozenset(keeps), tuple(ranks)


def _has(block: nn.Module, path: str) -> bool:
    try:
        block.get_submodule(path)
    except AttributeError:
        return False
    return True


def block_needs(shape: BlockShape, approx_bits: int | None, ms: bool) -> list[Need]:
    """Every tensor a perfect implementation of the block keeps (those no op reads have empty readers)."""
    d, m, e = shape.hidden, shape.intermediate, shape.element
    kv = d // shape.heads * shape.kv_heads
    needs: list[Need] = []
    ranks = dict(shape.lora_ranks)

    def keep(name: str, nbytes: float, **readers: bool) -> None:
        needs.append(Need(name, nbytes, tuple(k for k, on in readers.items() if on)))

    def linear_reads(*roles: str) -> bool:
        return any(r in shape.keeps_input for r in roles)

    def lora(*roles: str) -> None:
        for r in roles:
            if r in ranks:
                keep(f"{r} LoRA A output", ranks[r] * e, lora=True)

    def norm(name: str, rms: bool) -> None:
        keep(f"{name} input", d * e, norm=not ms)
        keep(f"{name} statistics", _STATS if ms or rms else 2 * _STATS, norm=True)

    def attention() -> None:
        keep("q", d * e, attention=True)
        keep("k", kv * e, attention=True)
        keep("v", kv * e, attention=True)
        keep("attention output", d * e, linear=linear_reads("o"), attention=True)
        keep("log-sum-exp", shape.heads * _STATS, attention=True)
        lora("o")

    def gelu_mlp() -> None:
        keep("fc1 output (activation input)", m * approx_bits / 8 if approx_bits else m * e, activation=True)
        keep("activation output", m * e, linear=linear_reads("fc2"))
        lora("fc2")

    rms = shape.layout == "pre_rms"
    if shape.layout == "post_ln":
        keep("block input (previous norm output)", d * e, linear=linear_reads("q", "k", "v"), norm=ms)
        lora("q", "k", "v")
        attention()
        norm("norm 1", rms=False)
        keep("norm 1 output", d * e, linear=linear_reads("fc1"), norm=ms)
        lora("fc1")
        gelu_mlp()
        norm("norm 2", rms=False)
        return needs
    norm("norm 1", rms)
    keep("norm 1 output", d * e, linear=linear_reads("q", "k", "v"), norm=ms)
    lora("q", "k", "v")
    attention()
    norm("norm 2", rms)
    if rms:
        keep("norm 2 output", d * e, linear=linear_reads("gate", "up"), norm=ms)
        lora("gate", "up")
        keep("gate", m * e, activation=True)
        keep("up", m * e, activation=True)
        keep("gated product", m * e, linear=linear_reads("down"))
        lora("down")
    else:
        keep("norm 2 output", d * e, linear=linear_reads("fc1"), norm=ms)
        lora("fc1")
        gelu_mlp()
    return needs


def minimum_by_kind(needs: list[Need]) -> dict[str, float]:
    """Bytes per token per kind of the kept tensors."""
    totals = dict.fromkeys(KINDS, 0.0)
    for n in needs:
        if n.readers:
            totals[n.kind] += n.bytes_per_token
    return totals
