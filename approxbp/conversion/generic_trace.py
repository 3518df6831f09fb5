"""Which layers read each norm's output, recorded from the model's own forward on example inputs (the generic path
of ``approxbp.convert``, ``approxbp.conversion.generic``).

Folding z = gamma * y + beta into the layers that read z is exact only if *nothing else* reads z.  One forward (in
train mode, then in eval mode; under no_grad, RNG state and buffers restored) is recorded with

- module hooks on every module: a norm's output y (the tensor object it returns) is tracked; a *reader* layer (an
  nn.Linear with torch's own forward, a peft LoRA layer on one, or an nn.MultiheadAttention called with query is key
  is value, packed in_proj) called at top level with y as its input is recorded as one of y's readers, and what runs
  inside a reader is its own business;
- a TorchFunctionMode seeing every torch function outside the readers: any call taking y that is not a metadata
  query (shape, dtype, ...) or a no-op cast returning y itself is a foreign read (a residual add, a dropout, a view,
  another norm...), and so is any use of a norm's or a reader's parameter outside its own module's forward;
- the model's output: y returned, or kept alive after the forward (a cache, a module attribute), is a foreign use.

Anything seen once is a problem for that norm; a reader that is also called on other inputs cannot take a fold.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from approxbp.conversion.fold import base_linear, lora_layer_class

METADATA = {"size", "dim", "ndimension", "numel", "nelement", "stride", "is_contiguous", "is_floating_point",
            "is_complex", "element_size", "get_device", "__len__", "storage_offset"}
NO_OP_CASTS = {"to", "contiguous", "type_as", "float", "double", "half", "bfloat16"}  # a read unless it returns y
OTHER = "(another input)"


@dataclass
class NormReads:
    """What the recorded forwards did with one norm's output: how often the norm ran, its reader layers (by id, in
    the order first seen) and the foreign uses found (each a short sentence)."""

    calls: int = 0
    readers: dict[int, nn.Module] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    in_output: bool = False


def reader_kind(module: nn.Module) -> str | None:
    """"linear" (nn.Linear with torch's forward, or a peft LoRA layer on one), "mha" (nn.MultiheadAttention with a
    packed in_proj) or None."""
    if isinstance(module, nn.MultiheadAttention):
        return "mha" if module._qkv_same_embed_dim and module.in_proj_weight is not None else None
    lora = lora_layer_class()
    if lora is not None and isinstance(module, lora):
        linear = base_linear(module)
        return "linear" if linear is not None and type(linear).forward is nn.Linear.forward else None
    return "linear" if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward else None


def _func_name(func: Callable) -> str:
    if getattr(func, "__name__", "") == "__get__":  # a property of Tensor: name it by its descriptor
        return getattr(getattr(func, "__self__", None), "__name__", "attribute")
    return getattr(func, "__name__", repr(func))


class ReadRecorder(TorchFunctionMode):
    """Records what reads the outputs of ``norms`` ({qualified name: module}) during forwards of ``model``."""

    def __init__(self, model: nn.Module, norms: dict[str, nn.Module]):
        super().__init__()
        self.names = {id(m): n or type(m).__name__ for n, m in model.named_modules()}
        self.kinds = {id(m): reader_kind(m) for m in model.modules()}
        self.norm_names = {id(m): name for name, m in norms.items()}
        self.reads = {name: NormReads() for name in norms}
        owners = [m for m in model.modules() if id(m) in self.norm_names or self.kinds[id(m)]]
        self.owner = {id(p): id(m) for m in owners for p in m.parameters(recurse=False)}
        self.foreign_param_reads: dict[int, str] = {}  # module id -> first read of one of its parameters elsewhere
        self.sources: dict[int, set[str]] = {}  # reader id -> the norms (or OTHER) its inputs came from
        self.outputs: dict[int, str] = {}  # id(tracked output) -> norm name
        self.kept: list[Tensor] = []  # the tracked outputs, alive while recording (their ids stay unique)
        self.stack: list[nn.Module] = []
        self.reader_depth = 0

    # ------------------------------------------------------------------ module hooks

    def enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        kind = self.kinds.get(id(module))
        if kind and self.reader_depth == 0:
            self._reader_call(module, kind, args, kwargs)
        self.stack.append(module)
        self.reader_depth += bool(kind)

    def leave(self, module: nn.Module, args: tuple, output) -> None:
        self.stack.pop()
        self.reader_depth -= bool(self.kinds.get(id(module)))
        name = self.norm_names.get(id(module))
        if name is None or self.reader_depth:
            return
        self.reads[name].calls += 1
        if isinstance(output, Tensor):
            self.outputs[id(output)] = name
            self.kept.append(output)
        else:
            self.reads[name].problems.append(f"its forward returned a {type(output).__name__}, not a tensor")

    def _reader_call(self, module: nn.Module, kind: str, args: tuple, kwargs: dict) -> None:
        values = list(args) + list(kwargs.values())
        if kind == "mha":
            qkv = [*args[:3], *(kwargs[k] for k in ("query", "key", "value") if k in kwargs)][:3]
            main = qkv[0] if len(qkv) == 3 and qkv[0] is qkv[1] is qkv[2] else None
            rest = [v for v in values if not any(v is t for t in qkv)]
            if main is None:
                rest = values
        else:
            main, rest = (values[0] if values else None), values[1:]
        source = self.outputs.get(id(main), OTHER)
        self.sources.setdefault(id(module), set()).add(source)
        if source != OTHER:
            self.reads[source].readers.setdefault(id(module), module)
        how = ("an nn.MultiheadAttention input other than query = key = value" if kind == "mha"
               else "an argument other than its input")
        for leaf in tree_leaves(rest):
            if id(leaf) in self.outputs:
                self._problem(self.outputs[id(leaf)], f"passed to {self._where(module)} as {how}")

    # ------------------------------------------------------------------ torch functions

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.reader_depth == 0:
            self._check(func, tree_leaves((args, kwargs)), result)
        return result

    def _check(self, func: Callable, leaves: list, result) -> None:
        name = _func_name(func)
        current = self.stack[-1] if self.stack else None
        for leaf in leaves:
            if not isinstance(leaf, Tensor):
                continue
            norm = self.outputs.get(id(leaf))
            if norm is not None and not self._harmless(func, name, leaf, result):
                self._problem(norm, f"read by torch {name} in {self._where(current)}")
            owner = self.owner.get(id(leaf))
            if owner is not None and (current is None or id(current) != owner):
                self.foreign_param_reads.setdefault(owner, f"torch {name} in {self._where(current)}")

    @staticmethod
    def _harmless(func: Callable, name: str, leaf: Tensor, result) -> bool:
        if name in NO_OP_CASTS:
            return result is leaf
        if name in METADATA or getattr(func, "__name__", "") == "__get__":
            return not any(isinstance(t, Tensor) for t in tree_leaves(result))
        return False

    # ------------------------------------------------------------------ after a forward

    def finish(self, output) -> None:
        """Check the model's ``output`` and whether any tracked tensor outlives the forward; then forget them."""
        for leaf in tree_leaves(output):
            if isinstance(leaf, Tensor) and id(leaf) in self.outputs:
                self.reads[self.outputs[id(leaf)]].in_output = True
        alive = [(weakref.ref(t), name) for t in self.kept if not self.reads[name := self.outputs[id(t)]].in_output]
        self.kept.clear()
        self.outputs.clear()
        if any(ref() is not None for ref, _ in alive):
            gc.collect()  # only then (it takes seconds in a large process): a reference cycle may still hold them
        for ref, name in alive:
            if ref() is not None:
                self._problem(name, "its output is kept after the forward (a cache or a module attribute holds it)")

    def _problem(self, norm: str, text: str) -> None:
        if text not in self.reads[norm].problems:
            self.reads[norm].problems.append(text)

    def _where(self, module: nn.Module | None) -> str:
        return "the model's forward" if module is None else f"{self.names.get(id(module))} ({type(module).__name__})"


def call_model(model: nn.Module, example_inputs):
    """``model(*inputs)`` for a tuple or list, ``model(**inputs)`` for a dict, ``model(inputs)`` for a tensor."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def check_example_inputs(example_inputs) -> None:
    if not isinstance(example_inputs, (dict, tuple, list, Tensor)):
        raise TypeError("example_inputs must be a tensor, a tuple/list of positional inputs or a dict of keyword "
                        f"inputs, got {type(example_inputs).__name__}")


def record_reads(model: nn.Module, norms: dict[str, nn.Module], example_inputs) -> ReadRecorder:
    """Run ``model`` on ``example_inputs`` in train mode and in eval mode (no_grad; training flags, buffers and the
    RNG state restored afterwards) and record what reads each norm's output."""
    check_example_inputs(example_inputs)
    recorder = ReadRecorder(model, norms)
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(recorder.enter, with_kwargs=True),
                                                    m.register_forward_hook(recorder.leave, always_call=True))]
    devices = sorted({t.device.index or 0 for t in [*model.parameters(), *model.buffers()] if t.is_cuda})
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for training in (True, False):
                model.train(training)
                try:
                    with recorder:
                        output = call_model(model, example_inputs)
                except Exception as error:
                    mode = "train" if training else "eval"
                    raise RuntimeError(f"approxbp.convert: the forward on example_inputs failed in {mode} mode "
                                       f"({type(error).__name__}: {error}); the model is unchanged") from error
                recorder.finish(output)
                del output
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    return recorder
