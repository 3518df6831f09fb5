"""Planning a conversion: walk the model, apply the rules, build every replacement module and check everything
before the model is touched (a failed check raises with the model unchanged)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from approxbp.conversion import quantized
from approxbp.conversion.fold import (
    SUPPORTED_DTYPES,
    adapter_swaps,
    base_linear,
    layout,
    reader_problem,
    weight_and_bias,
)
from approxbp.conversion.layers import FusedExperts, FusedGatedMLP
from approxbp.conversion.report import Change, Skip
from approxbp.conversion.rules import (
    ACTIVATION_TARGETS,
    APPROX_MODES,
    OFFSET_RMS_NORMS,
    READERS,
    RMS_NORMS,
    Fold,
    GatedMLP,
    Rule,
)
from approxbp.modules.approx_act import ApproxAct
from approxbp.modules.gated import ApproxGeGLU, ApproxSwiGLU
from approxbp.modules.ms_norm import MSLayerNorm, MSLayerNormAffine, MSRMSNorm
from approxbp.ops.approx_act import resolve_table
from approxbp.tables import Table
from approxbp.targets import GELU_FORMS

DEVICES = ("cpu", "cuda", "meta")
APPROXIMATE = {target: form for form, target in GELU_FORMS.items()}  # target -> F.gelu's ``approximate``


def resolve(root: nn.Module, path: str) -> nn.Module | None:
    """The submodule at dotted ``path`` (None if an attribute on the way is missing or None)."""
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def activation_target(m: nn.Module | None) -> str | None:
    if isinstance(m, nn.GELU):
        return GELU_FORMS.get(m.approximate)
    return ACTIVATION_TARGETS.get(type(m).__name__) if m is not None else None


def norm_info(m: nn.Module | None) -> tuple[str, float, tuple[int, ...]] | None:
    """(kind "layer" or "rms", eps, normalized shape) of a norm approxbp can replace, else None."""
    if isinstance(m, nn.LayerNorm) and type(m).__name__ == "LayerNorm":  # excludes channels-first LayerNorm2d etc.
        return "layer", m.eps, tuple(m.normalized_shape)
    if isinstance(m, nn.RMSNorm):
        dtype = m.weight.dtype if m.weight is not None else torch.float32
        eps = m.eps if m.eps is not None else torch.finfo(dtype).eps  # torch uses the input's dtype: the weight's here
        return "rms", eps, tuple(m.normalized_shape)
    if m is not None and type(m).__name__ in RMS_NORMS:
        return "rms", m.variance_epsilon, tuple(m.weight.shape)
    if m is not None and type(m).__name__ in OFFSET_RMS_NORMS:
        return "rms", m.eps, tuple(m.weight.shape)
    return None


def norm_gamma(m: nn.Module) -> Tensor | None:
    """The scale the norm multiplies its normalised input by: ``weight``, or 1 + weight for OFFSET_RMS_NORMS (a
    tensor computed once, trainable as the weight is)."""
    if type(m).__name__ not in OFFSET_RMS_NORMS:
        return m.weight
    with torch.no_grad():
        return (1 + m.weight).requires_grad_(m.weight.requires_grad)


def is_norm_like(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or type(m).__name__.endswith("Norm")


def check_block(name: str, block: nn.Module) -> None:
    """A clear error for tensors the ops do not take, before anything changes."""
    for t in itertools.chain(block.parameters(), block.buffers()):
        if t.device.type not in DEVICES:
            raise ValueError(f"approxbp.convert: {name or 'the model'} holds a tensor on {t.device}; the Approx-BP and "
                             f"MS-BP ops run on CPU and CUDA (and meta, for shape-only runs)")
        if t.is_floating_point() and t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"approxbp.convert: {name or 'the model'} holds a {t.dtype} tensor; the ops take "
                            f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")


@dataclass
class Swap:
    """``parent.<attr>`` goes from ``original`` to ``replacement`` (and back on revert)."""

    parent: nn.Module
    attr: str
    original: nn.Module
    replacement: nn.Module


@dataclass
class Reader:
    """A linear layer the norm's (gamma, beta) fold into: ``parent.<attr>`` is ``module`` (the layer, or a LoRA layer
    around it)."""

    name: str
    parent: nn.Module
    attr: str
    module: nn.Module
    linear: nn.Linear
    gamma: Tensor
    beta: Tensor | None


@dataclass
class Plan:
    """What ``convert`` will do (swaps and folds, not yet applied) and what it reports."""

    approx: str | None
    norms: str | None
    bits: int
    objective: str
    tables: dict[str, object]
    swaps: list[Swap] = field(default_factory=list)
    readers: list[Reader] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    claimed: set[int] = field(default_factory=set)
    used_tables: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------ walking

    def block(self, name: str, block: nn.Module, rule: Rule) -> None:
        def qualified(path: str) -> str:
            return f"{name}.{path}" if name else path

        for path in [f.norm for f in rule.folds] + list(rule.affine) + [p for p, _ in rule.keep] + list(rule.acts):
            self.claimed.add(id(resolve(block, path)))
        if rule.gated:
            self.claimed.add(id(resolve(block, f"{rule.gated.path}.{rule.gated.act}")))
        if rule.experts:
            self.claimed.add(id(resolve(block, f"{rule.experts}.act_fn")))
        if self.norms:
            for fold in rule.folds:
                self.fold(block, qualified, fold)
            for path in rule.affine:
                self.affine(block, qualified(path), path)
            for path, reason in rule.keep:
                kept = resolve(block, path)
                if kept is not None and is_norm_like(kept):
                    self.skipped.append(Skip(qualified(path), type(kept).__name__, reason, expected=True))
        if self.approx:
            for path in rule.acts:
                self.activation(block, qualified(path), path)
            if rule.gated:
                self.gated(block, qualified, rule.gated)
            if rule.experts:
                self.experts(block, qualified, rule.experts)

    def uncovered(self, model: nn.Module) -> None:
        """Norms and activations no rule knows about."""
        for name, m in model.named_modules():
            if id(m) in self.claimed or type(m).__module__.startswith("approxbp."):
                continue
            if (self.norms and is_norm_like(m)) or (self.approx and activation_target(m) is not None):
                self.skipped.append(Skip(name, type(m).__name__, "no conversion rule covers its block"))

    # ------------------------------------------------------------------ one rule target each

    def _skip(self, name: str, module: nn.Module | None, reason: str) -> None:
        self.skipped.append(Skip(name, type(module).__name__ if module is not None else "(missing)", reason))

    def _swap(self, root: nn.Module, path: str, replacement: nn.Module) -> None:
        parent_path, _, attr = path.rpartition(".")
        parent = resolve(root, parent_path) if parent_path else root
        self.swaps.append(Swap(parent, attr, getattr(parent, attr), replacement))

    def fold(self, block: nn.Module, qualified, fold: Fold) -> None:
        name, norm = qualified(fold.norm), resolve(block, fold.norm)
        if isinstance(norm, nn.Identity):  # no norm in this block (ModernBERT's first layer): nothing to convert
            return None
        info = norm_info(norm)
        if info is None:
            return self._skip(name, norm, "the rule expects a LayerNorm or a known RMSNorm here")
        kind, eps, shape = info
        readers = {p: resolve(block, p) for p in fold.readers}
        readers.update({p: m for p in fold.optional if (m := resolve(block, p)) is not None})
        gamma, beta = norm_gamma(norm), getattr(norm, "bias", None) if kind == "layer" else None
        if quantized.reads_quantized(readers):  # 4-bit readers: gamma applied on the fly, see that module
            return quantized.plan_fold(self, block, name, fold.norm, norm, readers, gamma, beta)
        shift_free = frozenset(fold.shift_free) & readers.keys()
        problem = self._fold_problem(shape, readers, gamma, beta, shift_free)
        if problem:
            return self._skip(name, norm, problem)
        new = (MSLayerNorm if kind == "layer" else MSRMSNorm)(shape, eps)
        self._swap(block, fold.norm, new)
        if gamma is None:  # no affine: nothing to fold
            self.changes.append(Change(name, "folded-norm", type(norm).__name__, type(new).__name__))
            return
        adapters = [swap for reader in readers.values() for swap in adapter_swaps(reader, gamma, beta)]
        for path, reader in readers.items():
            parent_path, _, attr = path.rpartition(".")
            parent = resolve(block, parent_path) if parent_path else block
            self.readers.append(Reader(qualified(path), parent, attr, reader, base_linear(reader), gamma,
                                       None if path in shift_free else beta))
        self.swaps += [Swap(parent, key, parent[key], replacement) for parent, key, replacement in adapters]
        after = f"{type(new).__name__}, {'gamma, beta' if beta is not None else 'gamma'} folded"
        if adapters:
            after += f"; {len(adapters)} LoRA adapter(s) still read gamma * y + beta"
        if beta is not None and shift_free:
            after += f"; beta not in {', '.join(sorted(shift_free))} (attention keys: shift-invariant)"
        self.changes.append(Change(name, "folded-norm", type(norm).__name__, after, tuple(map(qualified, readers))))

    @staticmethod
    def _fold_problem(shape: tuple[int, ...], readers: dict, gamma: Tensor | None, beta: Tensor | None,
                      shift_free: frozenset = frozenset()) -> str | None:
        if len(shape) != 1:
            return f"normalized_shape {shape} spans more than the last dimension"
        if not readers:
            return "none of the linear layers the rule names is in this block"
        for path, reader in readers.items():
            problem = "missing" if reader is None else reader_problem(reader, shape[0])
            if problem:
                return f"cannot fold into {path}: {problem}"
        if gamma is None:
            return None
        linears = {path: base_linear(reader) for path, reader in readers.items()}
        tensors = {"gamma": gamma, "beta": beta}
        for path, linear in linears.items():
            weight, bias = weight_and_bias(linear)
            tensors |= {f"{path}.{layout(linear).weight}": weight, f"{path}.bias": bias}
        trainable = sorted(k for k, t in tensors.items() if t is not None and t.requires_grad)
        frozen = sorted(k for k, t in tensors.items() if t is not None and not t.requires_grad)
        if trainable and frozen:
            return (f"mixed trainable ({', '.join(trainable)}) and frozen ({', '.join(frozen)}) parameters: "
                    "folding would change what trains")
        if not gamma.is_meta and bool((gamma == 0).any()):
            return "gamma has zero entries: the fold could not be undone"
        takes_beta = [linear for path, linear in linears.items() if path not in shift_free]
        if beta is not None and trainable and any(weight_and_bias(linear)[1] is None for linear in takes_beta):
            return "a reader has no bias to take the trainable beta"
        if beta is not None and any(layout(linear).bias is None for linear in takes_beta):
            return "a reader has no bias slot to take beta"
        return None

    def affine(self, block: nn.Module, name: str, path: str) -> None:
        norm = resolve(block, path)
        info = norm_info(norm)
        if info is None or info[0] != "layer":
            return self._skip(name, norm, "the rule expects a LayerNorm here (no output-saving affine RMSNorm op)")
        _, eps, shape = info
        if norm.weight is None:
            new = MSLayerNorm(shape, eps)
        else:  # the original Parameters themselves: same requires_grad, same optimizer entries
            new = MSLayerNormAffine(shape, eps, bias=norm.bias is not None, device="meta")
            new.weight = norm.weight
            if norm.bias is not None:
                new.bias = norm.bias
        self._swap(block, path, new)
        self.changes.append(Change(name, "affine-norm", type(norm).__name__, type(new).__name__))

    def _table(self, name: str, target: str) -> Table:
        given = self.tables.get(name)
        self.used_tables.add(name)
        return resolve_table(given, target, self.bits, self.objective)

    def _approx_problem(self, act: nn.Module | None) -> str | None:
        target = activation_target(act)
        if target is None:
            return f"{type(act).__name__ if act is not None else 'it'} has no Approx-BP form in approxbp"
        if target not in APPROX_MODES[self.approx]:
            return f"approx={self.approx!r} converts {', '.join(APPROX_MODES[self.approx])} activations only"
        return None

    def activation(self, block: nn.Module, name: str, path: str) -> None:
        act = resolve(block, path)
        problem = self._approx_problem(act)
        if problem:
            return self._skip(name, act, problem)
        new = ApproxAct(activation_target(act), table=self._table(name, activation_target(act)))
        self._swap(block, path, new)
        self.changes.append(Change(name, "activation", type(act).__name__, f"ApproxAct({new.extra_repr()})"))

    def gated(self, block: nn.Module, qualified, rule: GatedMLP) -> None:
        mlp, act_path = resolve(block, rule.path), f"{rule.path}.{rule.act}"
        act, name = resolve(block, act_path), qualified(act_path)
        children = [child for child in (rule.gate, rule.up, rule.down, rule.dropout) if child is not None]
        if any(resolve(block, f"{rule.path}.{child}") is None for child in children):
            return self._skip(name, act, f"{type(mlp).__name__} lacks the gate/up/down layers the rule names")
        problem = self._approx_problem(act)
        if problem:
            return self._skip(name, act, problem)
        target = activation_target(act)
        if target not in ("silu", *APPROXIMATE):  # no fused op: swap the activation alone, act(gate) * up stays
            return self.activation(block, name, act_path)
        table = self._table(name, target)
        fused = ApproxSwiGLU(table) if target == "silu" else ApproxGeGLU(APPROXIMATE[target], table)
        self._swap(block, rule.path, FusedGatedMLP(mlp, rule.gate, rule.up, rule.down, rule.act, fused, rule.dropout))
        self.changes.append(Change(name, "gated-mlp", type(act).__name__,
                                   f"{type(fused).__name__}({fused.extra_repr()}) fused into {qualified(rule.path)}"))

    def experts(self, block: nn.Module, qualified, path: str) -> None:
        experts, act_path = resolve(block, path), f"{path}.act_fn"
        act, name = resolve(block, act_path), qualified(act_path)
        if type(experts).__name__ not in READERS or READERS[type(experts).__name__].weight != "gate_up_proj":
            return self._skip(name, act, f"{type(experts).__name__} is not a stacked-experts class approxbp knows")
        if not getattr(experts, "has_gate", False) or not getattr(experts, "is_concatenated", False):
            return self._skip(name, act, "its experts are not gated with a concatenated [gate; up] projection")
        implementation = getattr(getattr(experts, "config", None), "_experts_implementation", None)
        if implementation not in FusedExperts.IMPLEMENTATIONS:
            return self._skip(name, act, f"experts_implementation {implementation!r} computes act(gate) * up inline; "
                                         f"{' and '.join(FusedExperts.IMPLEMENTATIONS)} call the gate approxbp fuses")
        problem = self._approx_problem(act)
        if problem:
            return self._skip(name, act, problem)
        target = activation_target(act)
        if target not in ("silu", *APPROXIMATE):
            return self._skip(name, act, f"no fused gated op for {target}")
        table = self._table(name, target)
        fused = ApproxSwiGLU(table) if target == "silu" else ApproxGeGLU(APPROXIMATE[target], table)
        self._swap(block, path, FusedExperts(experts, fused))
        self.changes.append(Change(name, "gated-mlp", type(act).__name__,
                                   f"{type(fused).__name__}({fused.extra_repr()}) fused into every expert of "
                                   f"{qualified(path)}"))
