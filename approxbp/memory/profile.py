"""Count the bytes autograd keeps during one forward pass, per storage, and attribute each storage to a block and an
op kind.

How a saved tensor is attributed:

1. Forward pre-hooks and forward hooks on every module of the model keep the stack of modules whose forward is
   running; the stack at the moment of a save gives the block (the first stack entry that is one of the model's
   transformer blocks) and the module context of the save.
2. A ``TorchFunctionMode`` keeps the name of the outermost torch function running (``linear``, ``dropout``,
   ``scaled_dot_product_attention``, ...): autograd saves inside that call, so the pack hook sees which op saves.
3. A ``saved_tensors_hooks`` pack hook records every save: storage key (``approxbp.saved.storage_key``), bytes,
   dtype, shape, function and module stack.  ``approxbp.memory.kinds.classify`` turns each save into a kind.
4. Storages are deduplicated: a storage saved by several ops (MS-BP's norm output, kept by the norm and by the next
   linear; attention's output, kept by the attention op and by the output projection) is counted once, charged to
   the highest-priority kind among its savers (``kinds.KINDS`` order) and to the block of the first save of that
   kind.  Every saver stays listed, and ``Profile.shared`` sums such storages by the kinds that share them.

Activation checkpointing (``checkpointed=True``, the model's blocks checkpointed without reentrance): what a block
saves inside its checkpoint goes to the checkpoint's own saved-tensor hooks and is dropped; the checkpoint keeps the
block's tensor inputs (positional and keyword, e.g. the hidden states and the rotary cos/sin) for the recomputation.
A forward pre-hook on each block records those as kind "checkpoint".

Parameters and buffers of the model are excluded.  Under ``FakeTensorMode`` a size that depends on data is
symbolic; it counts as 0 (``concrete_int``): that is what a model built from its config (default initialisation)
saves, e.g. no guarded features in ``MSLayerNormAffine``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from approxbp.memory.kinds import KINDS, classify, is_lora_wrapper
from approxbp.saved import storage_key


def concrete_int(n: int | torch.SymInt) -> int:
    """An int, or a SymInt whose data-dependent (unbacked) symbols are taken as 0."""
    if isinstance(n, torch.SymInt):
        expr = n.node.expr
        return int(expr.xreplace({s: 0 for s in expr.free_symbols}))
    return int(n)


@dataclass(frozen=True)
class Save:
    """One tensor autograd saved: its op kind, the block (None outside blocks), the torch function and the module
    that saved it (its name relative to the block)."""

    kind: str
    block: int | None
    function: str | None
    module: str


@dataclass
class Storage:
    """One unique storage kept for backward, attributed to ``kind`` and ``block`` (see the module docstring)."""

    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    saves: list[Save] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return min((s.kind for s in self.saves), key=KINDS.index)

    @property
    def block(self) -> int | None:
        return next(s.block for s in self.saves if s.kind == self.kind)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted({s.kind for s in self.saves}, key=KINDS.index))

    def describe(self) -> list[str]:
        """'kind: function in module' for every distinct saver."""
        seen = dict.fromkeys(f"{s.kind}: {s.function or '-'} in {s.module or '<model>'}" for s in self.saves)
        return list(seen)


@dataclass
class Profile:
    """Saved storages of one forward pass, attributed to blocks and kinds."""

    storages: list[Storage]
    num_blocks: int

    def bytes_by_kind(self, block: int | str | None = "all") -> dict[str, int]:
        """Bytes per kind for one block index, None (outside every block) or "all" (the whole model)."""
        totals = dict.fromkeys(KINDS, 0)
        for s in self.storages:
            if block == "all" or s.block == block:
                totals[s.kind] += s.nbytes
        return totals

    def block_storages(self, block: int) -> list[Storage]:
        return [s for s in self.storages if s.block == block]

    @property
    def total(self) -> int:
        return sum(s.nbytes for s in self.storages)

    @property
    def shared(self) -> dict[str, int]:
        """Bytes of storages saved by ops of more than one kind, keyed 'kind+kind' (charged to the first)."""
        shared: dict[str, int] = defaultdict(int)
        for s in self.storages:
            if len(s.kinds) > 1:
                shared["+".join(s.kinds)] += s.nbytes
        return dict(shared)


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: the ModuleList of same-class modules holding the most parameter elements."""
    best: list[nn.Module] = []
    best_size = -1
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = list(module), size
    return best


class _CurrentFunction(TorchFunctionMode):
    """Keeps the name of the outermost torch function running (inner calls run with the mode popped)."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        previous, self.name = self.name, getattr(func, "__name__", str(func))
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.name = previous


class _Recorder:
    def __init__(self, model: nn.Module):
        self.names = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
        self.blocks = {id(m): i for i, m in enumerate(find_blocks(model))}
        self.excluded = {storage_key(t) for t in [*model.parameters(), *model.buffers()]}
        self.stack: list[nn.Module] = []
        self.function = _CurrentFunction()
        self.storages: dict[int, Storage] = {}
        self.lora_inputs: set[int] = set()
        self.alive: list[torch.Tensor] = []  # keeps recorded storages alive, so their keys stay unique

    def push(self, module: nn.Module, args: tuple) -> None:
        self.stack.append(module)
        if is_lora_wrapper(module):
            for a in args:
                if isinstance(a, torch.Tensor):
                    self.lora_inputs.add(storage_key(a))
                    self.alive.append(a)

    def pop(self, module: nn.Module, args: tuple, output) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    def _name(self, module: nn.Module, block: nn.Module | None) -> str:
        """The module's qualified name, relative to its block when it is inside one."""
        name = self.names.get(id(module), type(module).__name__)
        prefix = None if block is None else self.names.get(id(block))
        return name.removeprefix(f"{prefix}.") if prefix and name != prefix else name

    def keep_inputs(self, block: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of a checkpointed block: record the tensors its checkpoint keeps."""
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        for t in tensors:
            self.record(t, Save("checkpoint", self.blocks[id(block)], "checkpoint", ""))

    def record(self, t: torch.Tensor, save: Save) -> None:
        key = storage_key(t)
        nbytes = concrete_int(t.untyped_storage().nbytes())
        if key in self.excluded or not nbytes:
            return
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = Storage(nbytes, t.dtype, tuple(concrete_int(n) for n in t.shape))
            self.alive.append(t)
        storage.saves.append(save)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key in self.excluded:
            return t
        stack = tuple(self.stack)
        kind = classify(self.function.name, stack, key in self.lora_inputs)
        outer = next((m for m in stack if id(m) in self.blocks), None)
        block = None if outer is None else self.blocks[id(outer)]
        module = self._name(stack[-1], outer) if stack else ""
        self.record(t, Save(kind, block, self.function.name, module))
        return t


@contextmanager
def profile_saved(model: nn.Module, checkpointed: bool = False) -> Iterator[Profile]:
    """Record what autograd saves while the block runs ``model`` (forward, loss); the Profile fills on exit.
    ``checkpointed``: the blocks run under activation checkpointing; their kept inputs are recorded."""
    recorder = _Recorder(model)
    profile = Profile([], len(recorder.blocks))
    with ExitStack() as stack:
        for module in model.modules():
            stack.callback(module.register_forward_pre_hook(recorder.push).remove)
            stack.callback(module.register_forward_hook(recorder.pop, always_call=True).remove)
        if checkpointed:
            for block in find_blocks(model):
                stack.callback(block.register_forward_pre_hook(recorder.keep_inputs, with_kwargs=True).remove)
        stack.enter_context(recorder.function)
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda t: t))
        yield profile
    profile.storages.extend(recorder.storages.values())
    recorder.alive.clear()
