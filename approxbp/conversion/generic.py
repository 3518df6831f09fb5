"""The generic path of ``approxbp.convert(model, example_inputs=...)``: modules that no rule claimed.

(a) Activation modules: every GELU (erf or tanh), SiLU or QuickGELU module (torch's, transformers', timm's) becomes
    ApproxAct, wherever it is.  An activation module is elementwise and ApproxAct computes the same forward, so no
    evidence is needed; in-place ones are left (a caller may read their input tensor afterwards).
(b) Norms: a LayerNorm or known RMSNorm whose output z = gamma * y + beta is read *only* by linear layers, as the
    model's own forward on ``example_inputs`` shows (``approxbp.conversion.generic_trace``), becomes MSLayerNorm /
    MSRMSNorm with gamma/beta folded into those layers: W' = W diag(gamma), b' = b + W beta (nn.Linear, peft LoRA
    layers on one, or the packed in_proj of an nn.MultiheadAttention called with query is key is value, whose
    in_proj_weight's columns take gamma).  Each reader must read nothing but this norm's output, and its weights
    must not be shared (tied) or used outside its forward.  Anything not shown safe is left and reported with why.
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from approxbp.conversion.fold import SUPPORTED_DTYPES
from approxbp.conversion.generic_trace import NormReads, ReadRecorder, record_reads
from approxbp.conversion.plan import Plan, Reader, activation_target, is_norm_like, norm_info, resolve
from approxbp.conversion.report import Change, Skip
from approxbp.conversion.rules import APPROX_MODES, Fold
from approxbp.modules.approx_act import ApproxAct
from approxbp.modules.ms_norm import MSLayerNorm, MSRMSNorm

# Activation classes outside torch and transformers, by qualified name (a bare class name is ambiguous here).
QUALIFIED_ACTIVATIONS: dict[str, str] = {
    "timm.layers.activations.GELU": "gelu",
    "timm.layers.activations.GELUTanh": "gelu_tanh",
    "timm.layers.activations.QuickGELU": "quick_gelu",
    "timm.layers.activations.Swish": "silu",
    "transformers.models.bloom.modeling_bloom.BloomGelu": "gelu_tanh",  # its constant 0.79788456 ~ sqrt(2/pi)
}
PREFIX = "generic path: "


def generic_activation_target(module: nn.Module) -> str | None:
    cls = type(module)
    return activation_target(module) or QUALIFIED_ACTIVATIONS.get(f"{cls.__module__}.{cls.__qualname__}")


def plan_generic(plan: Plan, model: nn.Module, example_inputs) -> None:
    """Add to ``plan`` what the generic path converts among the modules no rule claimed, and what it leaves."""
    unclaimed = [(name, m) for name, m in model.named_modules()
                 if id(m) not in plan.claimed and not type(m).__module__.startswith("approxbp.")]
    if plan.approx:
        for name, module in unclaimed:
            if generic_activation_target(module) is not None:
                plan.claimed.add(id(module))
                _activation(plan, model, name, module)
    if plan.norms:
        norms = {}
        for name, module in unclaimed:
            if is_norm_like(module):
                plan.claimed.add(id(module))
                if norm_info(module) is None:
                    _skip(plan, name, module, "not an nn.LayerNorm, nn.RMSNorm or a known RMSNorm class")
                else:
                    norms[name] = module
        if norms:
            recorder = record_reads(model, norms, example_inputs)
            tied, wrapped = _tied_and_wrapped(model)
            for name, norm in norms.items():
                problem = _reads_problem(recorder, recorder.reads[name], tied, wrapped)
                if problem:
                    _skip(plan, name, norm, problem, expected=recorder.reads[name].in_output)
                else:
                    _fold(plan, model, recorder, name, norm)


def _tied_and_wrapped(model: nn.Module) -> tuple[set[int], dict[int, str]]:
    """ids of the Parameters held by more than one module; {id of a wrapped base layer: its wrapper's name}."""
    held = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    wrapped = {id(m.base_layer): n for n, m in model.named_modules()
               if isinstance(getattr(m, "base_layer", None), nn.Module)}
    return {i for i, count in held.items() if count > 1}, wrapped


def _skip(plan: Plan, name: str, module: nn.Module, reason: str, expected: bool = False) -> None:
    plan.skipped.append(Skip(name, type(module).__name__, PREFIX + reason, expected))


def _activation(plan: Plan, model: nn.Module, name: str, module: nn.Module) -> None:
    target = generic_activation_target(module)
    if getattr(module, "inplace", False):
        return _skip(plan, name, module, "in-place: its caller may read the input tensor it overwrites")
    if target not in APPROX_MODES[plan.approx]:
        return _skip(plan, name, module, f"approx={plan.approx!r} converts {', '.join(APPROX_MODES[plan.approx])} "
                                         "activations only")
    new = ApproxAct(target, table=plan._table(name, target))
    plan._swap(model, name, new)
    plan.changes.append(Change(name, "activation", type(module).__name__, f"ApproxAct({new.extra_repr()})"))


def _fold(plan: Plan, model: nn.Module, recorder: ReadRecorder, name: str, norm: nn.Module) -> None:
    reads = recorder.reads[name]
    names = [recorder.names[i] for i in reads.readers]
    mhas = [r for r in reads.readers.values() if isinstance(r, nn.MultiheadAttention)]
    if not mhas:
        return plan.fold(model, lambda path: path, Fold(name, tuple(names)))
    if len(reads.readers) > 1:
        return _skip(plan, name, norm, "read by an nn.MultiheadAttention and other layers (only an attention alone "
                                       "is folded)")
    _fold_into_attention(plan, model, name, norm, names[0], mhas[0])


def _reads_problem(recorder: ReadRecorder, reads: NormReads, tied: set[int], wrapped: dict[int, str]) -> str | None:
    """Why the recorded forwards do not show that only linear readers read this norm's output (None: they do)."""
    if reads.in_output:
        return "its output is part of the model's output"
    if reads.problems:
        more = f" (and {len(reads.problems) - 1} more use(s))" if len(reads.problems) > 1 else ""
        return f"its output is {reads.problems[0]}{more}"
    if not reads.calls:
        return "not called by the forward on example_inputs"
    if not reads.readers:
        return "its output is not read by any layer"
    for i, reader in reads.readers.items():
        where = recorder.names[i]
        if len(recorder.sources[i]) > 1:
            return f"its reader {where} also reads other inputs"
        if i in wrapped:
            return f"its reader {where} is the base layer of {wrapped[i]}, a wrapper that also reads its input"
        foreign = [recorder.foreign_param_reads[id(m)] for m in reader.modules()
                   if id(m) in recorder.foreign_param_reads]
        if foreign:
            return f"its reader {where}'s parameters are used outside it ({foreign[0]})"
        if any(id(p) in tied for p in reader.parameters()):
            return f"its reader {where} shares (ties) parameters with another module"
    return None


class PackedInProjection(nn.Linear):
    """An nn.MultiheadAttention's packed q/k/v input projection seen as the linear layer it is (``weight`` is
    in_proj_weight, ``bias`` in_proj_bias, both the attention's own Parameters) for ``LinearFold`` and ``convert``'s
    reader hooks (registered on the attention).  It holds no parameters and is not part of the model."""

    def __init__(self, attention: nn.MultiheadAttention):
        nn.Module.__init__(self)
        self.__dict__["attention"] = attention  # not a submodule
        self.in_features, self.out_features = attention.embed_dim, 3 * attention.embed_dim

    @property
    def weight(self):
        return self.attention.in_proj_weight

    @property
    def bias(self):
        return self.attention.in_proj_bias

    def register_parameter(self, name: str, param) -> None:  # nn.Module.__setattr__ of a Parameter lands here
        self.attention.register_parameter(f"in_proj_{name}", param)

    def register_forward_pre_hook(self, hook, **kwargs):
        return self.attention.register_forward_pre_hook(hook, **kwargs)


def _fold_into_attention(plan: Plan, model: nn.Module, name: str, norm: nn.Module, reader: str,
                         attention: nn.MultiheadAttention) -> None:
    kind, eps, shape = norm_info(norm)
    gamma, beta = norm.weight, getattr(norm, "bias", None) if kind == "layer" else None
    problem = _attention_problem(shape, attention, gamma, beta)
    if problem:
        return _skip(plan, name, norm, f"cannot fold into {reader}: {problem}")
    new = (MSLayerNorm if kind == "layer" else MSRMSNorm)(shape, eps)
    plan._swap(model, name, new)
    if gamma is None:
        plan.changes.append(Change(name, "folded-norm", type(norm).__name__, type(new).__name__))
        return
    parent_path, _, attr = reader.rpartition(".")
    projection = PackedInProjection(attention)
    plan.readers.append(Reader(reader, resolve(model, parent_path) if parent_path else model, attr, projection,
                               projection, gamma, beta))
    after = f"{type(new).__name__}, {'gamma, beta' if beta is not None else 'gamma'} folded into in_proj"
    plan.changes.append(Change(name, "folded-norm", type(norm).__name__, after, (reader,)))


def _attention_problem(shape, attention: nn.MultiheadAttention, gamma, beta) -> str | None:
    """The checks ``Plan._fold_problem`` makes for linear readers, for the packed in_proj."""
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    if len(shape) != 1 or shape[0] != attention.embed_dim:
        return f"normalized_shape {shape} is not ({attention.embed_dim},)"
    if weight.dtype not in SUPPORTED_DTYPES:
        return f"in_proj_weight is {weight.dtype}"
    if gamma is None:
        return None
    tensors = {"gamma": gamma, "beta": beta, "in_proj_weight": weight, "in_proj_bias": bias}
    trainable = sorted(k for k, t in tensors.items() if t is not None and t.requires_grad)
    frozen = sorted(k for k, t in tensors.items() if t is not None and not t.requires_grad)
    if trainable and frozen:
        return (f"mixed trainable ({', '.join(trainable)}) and frozen ({', '.join(frozen)}) parameters: folding "
                "would change what trains")
    if not gamma.is_meta and bool((gamma == 0).any()):
        return "gamma has zero entries: the fold could not be undone"
    if beta is not None and trainable and bias is None:
        return "no in_proj_bias to take the trainable beta"
    return None
