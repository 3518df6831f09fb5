"""MS-BP norms over quantized (bitsandbytes 4-bit, QLoRA) linear layers, and folding the norms before quantization.

A pre-norm's affine cannot be folded into an NF4 weight without requantizing it.  Over 4-bit readers ``convert``
instead applies gamma on the fly, where each reader reads the norm's output z = gamma * y (+ beta):

- the 4-bit base layer becomes ``ScaledInput4bit``: the same module (same Params4bit, quant_state, compute dtype,
  state_dict keys) whose forward is base(gamma * y + beta), with gamma and beta copied into non-persistent
  buffers.  gamma * y is a temporary: with gamma frozen its product saves only gamma (a buffer), and bitsandbytes'
  MatMul4Bit keeps no input (``ctx.tensors = (None, B)``: only the packed weight), so the base keeps nothing;
- its LoRA adapters read gamma * y + beta through ``approxbp.conversion.fold.adapter_swaps`` (as over full-precision
  bases), so that without dropout A keeps y itself, the storage the MS norm keeps anyway;
- the norm becomes MSRMSNorm / MSLayerNorm without affine, keeping y and one fp32 rstd per row.

The base's input is exactly the original one (gamma * y in torch's type promotion, as HF's RMSNorm computes
``weight * y``), so the 4-bit matmul sees the same bits.  peft's merge/unmerge stay exact without change: the
merged weight W + s B A is applied to gamma * y, as the unmerged sum was.  Norms with a trainable gamma or beta
over 4-bit readers are left alone (reported): a buffer copy would not train.

``fold_norms_for_quantization(model)`` is the other route, for a full-precision model about to be quantized: it
folds every pre-norm's gamma (and beta) into the weights of the linear layers that read it (nn.Linear or a
``rules.READERS`` layout: MoE routers and stacked experts) and makes the norm's affine the identity (gamma 1, i.e.
weight 0 for Gemma's (1 + weight) norms; beta 0), keeping the model's classes, so that it saves, loads and
quantizes as before; ``convert`` on the quantized model then applies gamma = 1 as above.  It saves no memory over
applying gamma on the fly (which keeps nothing either) and changes the NF4 weights (those of W diag(gamma) instead
of W); ``tests/qlora`` measures both.
"""

from __future__ import annotations

import sys
from functools import cache

import torch
from torch import Tensor, nn

from approxbp.conversion.fold import LinearFold, adapter_problem, adapter_swaps, lora_layer_class, weight_and_bias


def quantized_class() -> type | None:
    """bitsandbytes' Linear4bit, if bitsandbytes is imported (a model cannot hold its layers otherwise)."""
    return sys.modules["bitsandbytes"].nn.Linear4bit if "bitsandbytes" in sys.modules else None


def quantized_base(reader: nn.Module | None) -> nn.Module | None:
    """The 4-bit linear layer ``reader`` is or wraps (a peft LoRA layer's base), else None."""
    linear4bit, lora = quantized_class(), lora_layer_class()
    if linear4bit is None or reader is None:
        return None
    base = reader.base_layer if lora is not None and isinstance(reader, lora) else reader
    return base if isinstance(base, linear4bit) else None


def reader_problem(reader: nn.Module | None, width: int) -> str | None:
    """Why gamma cannot be applied on the input of the 4-bit ``reader`` (None: it can)."""
    base = quantized_base(reader)
    if base is None:
        return f"reader {type(reader).__name__} is not a 4-bit linear layer (the other readers are)"
    if base.in_features != width:
        return f"reader has {base.in_features} input features, the norm {width}"
    if isinstance(base, ScaledInput4bit):
        return "reader is already converted"
    if reader is not base:
        return adapter_problem(reader)
    return None


def fold_problem(readers: dict[str, nn.Module | None], width: int, gamma: Tensor | None,
                 beta: Tensor | None) -> str | None:
    """Why a norm read by 4-bit layers cannot become an MS norm (None: it can)."""
    for path, reader in readers.items():
        problem = "missing" if reader is None else reader_problem(reader, width)
        if problem:
            return f"cannot apply the affine on the input of {path}: {problem}"
    trainable = [name for name, t in (("gamma", gamma), ("beta", beta)) if t is not None and t.requires_grad]
    if trainable:
        return f"trainable {' and '.join(trainable)} over 4-bit readers (only frozen norms are converted there)"
    return None


class ScaledInput4bit:
    """Mixin of ``scaled_class``: a 4-bit linear layer reading z = gamma * y + beta from the MS norm's y.  Built by
    ``scaled_input``; shares the original layer's parameters (the same ``_parameters`` dict), so peft's merge, a
    device move and ``revert`` see one weight."""

    def forward(self, y: Tensor, *args, **kwargs) -> Tensor:
        self._check_adapters()
        z = self.gamma * y if self.beta is None else torch.addcmul(self.beta, self.gamma, y)
        return super().forward(z, *args, **kwargs)

    def _check_adapters(self) -> None:
        """Refuse a LoRA adapter added after the conversion: it would read y instead of z."""
        if torch.compiler.is_compiling():
            return
        from approxbp.conversion.guards import late_adapter_problem

        parent, attr, name = self._approxbp_reader
        problem = late_adapter_problem(name, getattr(parent, attr, None), self)
        if problem:
            raise RuntimeError(problem)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, input=gamma*y{'+beta' if self.beta is not None else ''} (MS norm's y)"


@cache
def scaled_class(cls: type) -> type:
    """The subclass of the 4-bit linear class ``cls`` with ``ScaledInput4bit``'s forward."""
    return type(f"ScaledInput{cls.__name__}", (ScaledInput4bit, cls), {"__module__": __name__})


def scaled_input(base: nn.Module, gamma: Tensor, beta: Tensor | None, parent: nn.Module, attr: str,
                 name: str) -> nn.Module:
    """``base`` (a 4-bit linear layer read as ``parent.<attr>``, qualified name ``name``) computing
    base(gamma * y + beta); ``base`` itself is unchanged and comes back on revert."""
    new = object.__new__(scaled_class(type(base)))
    new.__dict__.update(base.__dict__)
    new.__dict__["_buffers"] = dict(base._buffers)
    new.__dict__["_non_persistent_buffers_set"] = set(base._non_persistent_buffers_set)
    new.register_buffer("gamma", gamma.detach().clone(), persistent=False)
    new.register_buffer("beta", None if beta is None else beta.detach().clone(), persistent=False)
    new.__dict__["_approxbp_reader"] = (parent, attr, name)  # not a submodule: no state_dict keys, no cycle there
    return new


def reader_swaps(reader: nn.Module, parent: nn.Module, attr: str, name: str, gamma: Tensor,
                 beta: Tensor | None) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, key, new module) swaps that make the 4-bit ``reader`` (``parent.<attr>``) read y: its base and, for a
    LoRA layer, its adapters.  Keys are attribute names (``setattr``) or ModuleDict keys."""
    base = quantized_base(reader)
    if reader is base:
        return [(parent, attr, scaled_input(base, gamma, beta, parent, attr, name))]
    return [(reader, "base_layer", scaled_input(base, gamma, beta, parent, attr, name)),
            *adapter_swaps(reader, gamma, beta)]


def reads_quantized(readers: dict[str, nn.Module | None]) -> bool:
    """Whether any of a norm's readers is a 4-bit linear layer (then ``plan_fold`` plans the norm)."""
    return any(quantized_base(r) is not None for r in readers.values())


def plan_fold(plan, block: nn.Module, name: str, path: str, norm: nn.Module, readers: dict[str, nn.Module | None],
              gamma: Tensor | None, beta: Tensor | None) -> None:
    """Add to ``plan`` (an ``approxbp.conversion.plan.Plan``) the MS norm at ``block.<path>`` (qualified ``name``)
    and the swaps that make its 4-bit ``readers`` ({path in block: module}) apply gamma and beta, or a skip."""
    from approxbp.conversion.plan import Swap, norm_info, resolve
    from approxbp.conversion.report import Change
    from approxbp.modules.ms_norm import MSLayerNorm, MSRMSNorm

    kind, eps, shape = norm_info(norm)
    problem = fold_problem(readers, shape[-1], gamma, beta) if len(shape) == 1 else \
        f"normalized_shape {shape} spans more than the last dimension"
    if problem:
        return plan._skip(name, norm, problem)
    new = (MSLayerNorm if kind == "layer" else MSRMSNorm)(shape, eps)
    plan._swap(block, path, new)
    qualified = name.removesuffix(path)
    for reader_path, reader in readers.items():
        parent_path, _, attr = reader_path.rpartition(".")
        parent = resolve(block, parent_path) if parent_path else block
        swaps = reader_swaps(reader, parent, attr, qualified + reader_path, gamma, beta)
        plan.swaps += [Swap(p, key, p[key] if isinstance(p, nn.ModuleDict) else getattr(p, key), new_module)
                       for p, key, new_module in swaps]
    plan.changes.append(Change(name, "folded-norm", type(norm).__name__,
                               f"{type(new).__name__}; {'gamma, beta' if beta is not None else 'gamma'} applied on "
                               "the input of 4-bit readers (not folded)", tuple(qualified + p for p in readers)))
    return None


def fold_norms_for_quantization(model: nn.Module) -> list[str]:
    """Fold every pre-norm's gamma/beta that ``approxbp.convert`` would fold into the readers' weights of the
    full-precision ``model`` (in place: W <- W diag(gamma), b <- b + W beta, rounded once from fp64), then make
    each norm's affine the identity (``identity_affine``); the model computes the same function with the same
    classes and state_dict keys.
    Quantize it afterwards (``save_pretrained``, then ``from_pretrained(..., quantization_config=...)``), add
    adapters, and ``convert``.  Returns the folded norms' names.  Refuses a model with quantized layers or LoRA
    adapters (fold first, then quantize and add them)."""
    from approxbp.conversion.planner import check_model, check_options, plan_model
    from approxbp.conversion.rules import RULES

    check_model(model, "fold_norms_for_quantization")
    if quantized_class() is not None and any(isinstance(m, quantized_class()) for m in model.modules()):
        raise ValueError("fold_norms_for_quantization needs the full-precision model: it holds 4-bit layers")
    lora = lora_layer_class()
    if lora is not None and any(isinstance(m, lora) for m in model.modules()):
        raise ValueError("fold_norms_for_quantization needs the model without LoRA adapters (add them after "
                         "quantizing)")
    plan, report = plan_model(model, check_options(None, "ms", 2, "primitive", None), RULES)
    with torch.no_grad():
        for reader in plan.readers:
            weight, bias = weight_and_bias(reader.linear)  # folded from its own values: not undone, no stash
            LinearFold(reader.linear, reader.gamma, reader.beta, weight.detach(),
                       None if bias is None else bias.detach(), reader.name).apply()
        names = [c.name for c in report.changes if c.kind == "folded-norm" and c.readers]
        for name in names:
            identity_affine(model.get_submodule(name))
    return names


def identity_affine(norm: nn.Module) -> None:
    """Make the norm's affine the identity: weight 1 (0 for OFFSET_RMS_NORMS, which scale by 1 + weight), bias 0."""
    from approxbp.conversion.rules import OFFSET_RMS_NORMS

    norm.weight.fill_(0 if type(norm).__name__ in OFFSET_RMS_NORMS else 1)
    if getattr(norm, "bias", None) is not None:
        norm.bias.zero_()
