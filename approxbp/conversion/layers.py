"""Small modules that ``approxbp.convert`` puts into a model.  None has parameters of its own: they hold the original
model's submodules and parameters under the original names, so ``state_dict`` keys and peft adapter files stay the
same; the gamma/beta they carry are non-persistent buffers (copies of the folded norm's values).  ``hand_back``
gives the modules coming back on revert what they share with these, as it is then."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import is_fake

from approxbp.modules.ms_norm import MSLayerNormAffine


class _FoldedAffine(nn.Module):
    """Holds a folded norm's gamma/beta as non-persistent buffers (copies; ``state_dict`` does not hold them).  Made on
    the meta device, they hold no values, and nothing can give them any (the original norm is not part of the
    converted model): after ``to_empty`` they would be garbage, so ``affine()`` refuses them on any device but meta
    and fake tensors (shape-only runs, as the memory profiler's)."""

    def _affine_buffers(self, gamma: Tensor, beta: Tensor | None) -> None:
        self.register_buffer("gamma", gamma.detach().clone(), persistent=False)
        self.register_buffer("beta", None if beta is None else beta.detach().clone(), persistent=False)
        self.made_on_meta = gamma.is_meta

    def affine(self) -> tuple[Tensor, Tensor | None]:
        """(gamma, beta); RuntimeError if they were made on the meta device and materialised since."""
        if self.made_on_meta and not self.gamma.is_meta and not is_fake(self.gamma):
            raise RuntimeError(f"approxbp: this {type(self).__name__} was converted on the meta device and "
                               "materialised since: its copies of the folded norm's gamma/beta hold no values (the "
                               "original norm is not part of the converted model).  Load the weights, then convert.")
        return self.gamma, self.beta


class FusedGatedMLP(nn.Module):
    """``down(act(gate(x), up(x)))`` with a fused gated activation (ApproxSwiGLU / ApproxGeGLU), replacing an MLP that
    computed ``down(act(gate(x)) * up(x))``.  With ``up`` None, ``gate`` is one projection whose output holds both
    halves, ``gate, up = proj(x).chunk(2, -1)`` (ModernBERT's Wi): the fused op takes that output whole, so autograd
    saves its one storage once.  ``dropout``: the MLP's dropout module, applied to the product before ``down``.  Its
    layers are the original MLP's, under their original names."""

    def __init__(self, mlp: nn.Module, gate: str, up: str | None, down: str, act: str, fused: nn.Module,
                 dropout: str | None = None):
        super().__init__()
        self.names = (gate, up, down, act, dropout)
        for name in self.layers:
            self.add_module(name, getattr(mlp, name))
        self.add_module(act, fused)

    @property
    def layers(self) -> tuple[str, ...]:
        """Names of the original MLP's submodules held here (handed back on revert)."""
        gate, up, down, _, dropout = self.names
        return tuple(name for name in (gate, up, down, dropout) if name is not None)

    def forward(self, x: Tensor) -> Tensor:
        gate, up, down, act, dropout = (None if name is None else getattr(self, name) for name in self.names)
        hidden = act(gate(x)) if up is None else act(gate(x), up(x))
        return down(hidden if dropout is None else dropout(hidden))

    def extra_repr(self) -> str:
        gate, up, down, act, dropout = self.names
        inner = f"{act}({gate}(x))" if up is None else f"{act}({gate}(x), {up}(x))"
        return f"{down}({inner if dropout is None else f'{dropout}({inner})'})"


class FusedExperts(nn.Module):
    """Stacked MoE experts (transformers' ``@use_experts_implementation`` classes with a concatenated gate_up_proj:
    Mixtral, Qwen2-MoE, Qwen3-MoE) whose ``_apply_gate``, act(gate) * up on the halves of every routed token's
    gate_up output, is the fused gated op.  The forward is the original class's, run on this module: transformers'
    expert implementation (grouped_mm, batched_mm), routing weights and order stay as they were.  The original
    Parameters are held under their own names; other attributes (config, num_experts, ...) are read from the original
    module.  The eager implementation, which computes act(gate) * up inline, is refused."""

    IMPLEMENTATIONS = ("grouped_mm", "batched_mm")  # transformers' implementations that call ``_apply_gate``

    def __init__(self, experts: nn.Module, fused: nn.Module):
        super().__init__()
        for name, parameter in experts.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        self.act_fn = fused
        self.__dict__["original"] = experts  # not a submodule: its Parameters are registered here

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if "original" not in self.__dict__:
                raise
            return getattr(self.__dict__["original"], name)

    def _apply_gate(self, gate_up_out: Tensor) -> Tensor:
        return self.act_fn(gate_up_out)

    def forward(self, *args, **kwargs) -> Tensor:
        implementation = self.config._experts_implementation
        if implementation not in self.IMPLEMENTATIONS:
            raise RuntimeError(f"approxbp: experts_implementation {implementation!r} does not call _apply_gate, where "
                               f"the fused gated op is; use one of {self.IMPLEMENTATIONS} (revert, set it, convert)")
        return type(self.original).forward(self, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{type(self.original).__name__}, _apply_gate=act_fn(gate_up_out)"


class AffineInputLinear(_FoldedAffine):
    """A LoRA ``lora_A`` (bias-free nn.Linear with weight A) whose input is now a folded norm's output y: computes
    A (gamma * y + beta), its value before folding, as F.linear(y, A * gamma, A @ beta), so that it saves y (shared
    with the norm) and A gets exactly its original gradient.  ``weight`` is the original Parameter."""

    def __init__(self, linear: nn.Linear, gamma: Tensor, beta: Tensor | None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self._affine_buffers(gamma, beta)

    def forward(self, y: Tensor) -> Tensor:
        gamma, beta = self.affine()
        bias = self.bias
        if beta is not None:
            shift = F.linear(beta.to(self.weight.dtype), self.weight)
            bias = shift if bias is None else bias + shift
        return F.linear(y, self.weight * gamma.to(self.weight.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, input=gamma*y+beta (folded norm)"


class AffineThenDropout(_FoldedAffine):
    """A LoRA ``lora_dropout`` whose input is now a folded norm's output y: rebuilds z = gamma * y + beta, the input
    it had before folding, and applies the original dropout module to it (the mask multiplies beta too, so dropout
    cannot be moved onto the weight)."""

    def __init__(self, dropout: nn.Module, gamma: Tensor, beta: Tensor | None):
        super().__init__()
        self.dropout = dropout
        self._affine_buffers(gamma, beta)

    def forward(self, y: Tensor) -> Tensor:
        gamma, beta = self.affine()
        gamma = gamma.to(y.dtype)
        z = y * gamma if beta is None else torch.addcmul(beta.to(y.dtype), y, gamma)
        return self.dropout(z)


def hand_back(replacement: nn.Module, original: nn.Module) -> None:
    """Give ``original`` (coming back on revert) the submodules and parameters it shares with ``replacement`` as they
    are now: they may have been replaced since the conversion (peft's ``merge_and_unload`` puts base layers in place
    of LoRA layers, ``load_state_dict(assign=True)`` puts in new Parameters)."""
    if isinstance(replacement, FusedGatedMLP):
        for name in replacement.layers:
            setattr(original, name, getattr(replacement, name))
    elif isinstance(replacement, FusedExperts):
        for name, parameter in replacement.named_parameters(recurse=False):
            setattr(original, name, parameter)
    elif isinstance(replacement, (AffineInputLinear, MSLayerNormAffine)):
        for name in ("weight", "bias"):
            if isinstance(getattr(replacement, name), nn.Parameter):
                setattr(original, name, getattr(replacement, name))
