"""Folding a pre-norm's affine into the linear layers that read its output, and undoing it.

    z = gamma * y + beta,   out = W z + b = (W diag(gamma)) y + (b + W beta) = W' y + b'

The fold writes W' and b' into each reader's own weight and bias in place (same Parameter objects: an optimizer, DDP
or peft built beforehand keeps working), computed in fp64 and rounded once; a reader without a bias gets a new frozen
one when the norm has a beta and everything is frozen.  The norm keeps no parameters (MSLayerNorm / MSRMSNorm).  The
original weights are stashed for ``revert`` (on the CPU for CUDA models: host memory the size of the folded weights).

Gradients.  The converted model trains (W'_r, b'_r) for every reader r; the gradients of the original parameters follow
from the chain rule:
    dL/dW_r = dL/dW'_r diag(gamma) + dL/db'_r beta^T,        dL/db_r = dL/db'_r,
    dL/dgamma = sum_r colsum(dL/dW'_r * W_r),                dL/dbeta = sum_r W_r^T dL/db'_r.
Training (W', b') spans the same functions as (W, b, gamma, beta) (gamma without zeros), but it is a
reparameterisation: an optimizer step moves the model differently, since gamma's and beta's own updates are absorbed
into W' and b'.  ``requires_grad`` is kept: a norm is folded only when gamma, beta and every reader's weight and bias
are all trainable or all frozen (anything mixed, a zero in gamma, or a new bias that would be trainable is left
unconverted and reported).

LoRA (peft) readers: out = W z + b + s B A drop(z).  The fold goes into the frozen base layer; the adapter keeps
computing A drop(z), so A and B train exactly as before (same parameters, same gradients, same adapter files):
- without dropout (nn.Identity), lora_A becomes ``AffineInputLinear``: A z = (A diag(gamma)) y + A beta from y, with
  A * gamma made on the fly.  It saves y, which the MS norm saves anyway (the adapter shares the norm's memory), and
  the r x d product A * gamma;
- with dropout, drop(z) needs z itself (the mask multiplies beta too): lora_dropout becomes ``AffineThenDropout``,
  which rebuilds z before the same dropout (same mask).  The adapter then saves drop(z) as it did before.
DoRA and other LoRA variants, merged adapters and quantized base layers are not folded (reported).  peft's merge
and unmerge of a folded adapter fold its delta as well (``approxbp.conversion.lora_merge``); an adapter added after
the conversion is refused (``approxbp.conversion.guards``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from approxbp.conversion.layers import AffineInputLinear, AffineThenDropout

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def lora_layer_class() -> type | None:
    """peft's LoraLayer, if peft is imported (a model cannot hold peft layers otherwise)."""
    return sys.modules["peft"].tuners.lora.LoraLayer if "peft" in sys.modules else None


def base_linear(reader: nn.Module) -> nn.Linear | None:
    lora = lora_layer_class()
    linear = reader.base_layer if lora is not None and isinstance(reader, lora) else reader
    return linear if isinstance(linear, nn.Linear) else None


def reader_problem(reader: nn.Module, width: int) -> str | None:
    """Why the norm's affine cannot be folded into ``reader`` (None: it can)."""
    linear = base_linear(reader)
    if linear is None:
        return f"reader {type(reader).__name__} is not a linear layer"
    if linear.weight.dtype not in SUPPORTED_DTYPES:
        return f"reader weight is {linear.weight.dtype} (quantized?)"
    if linear.in_features != width:
        return f"reader has {linear.in_features} input features, the norm {width}"
    if reader is not linear:
        if reader.merged:
            return "its LoRA adapter is merged into the base weight (unmerge first)"
        if getattr(reader, "lora_variant", None) or any(getattr(reader, "use_dora", {}).values()):
            return "its LoRA adapter is a variant (DoRA, ...) that reads the base weight"
        if any(type(a) is not nn.Linear for a in reader.lora_A.values()):
            return "its LoRA adapter's A is not an nn.Linear"
    return None


def _stash(t: Tensor) -> Tensor:
    """A copy kept for an exact revert: on the CPU for CUDA tensors, so it costs no GPU memory."""
    return t.detach().to("cpu", copy=True) if t.is_cuda else t.detach().clone()


@dataclass
class LinearFold:
    """One reader's fold: its original weight and bias (stashed copies) and the norm's gamma and beta.  The folded
    values are always computed from the stash, in fp64 on the stash's device and rounded once, so that ``revert``
    can tell an untouched reader (restored exactly) from a trained one (unfolded)."""

    linear: nn.Linear
    gamma: Tensor
    beta: Tensor | None
    weight: Tensor
    bias: Tensor | None
    name: str = "the reader"

    @property
    def creates_bias(self) -> bool:
        return self.bias is None and self.beta is not None

    def folded(self) -> tuple[Tensor, Tensor | None]:
        """(W diag(gamma), b + W beta), in the weight's and bias's dtypes."""
        w64 = self.weight.double()
        bias = None if self.bias is None else self.bias.double()
        if self.beta is not None:
            shift = (w64 * self.beta.detach().to(w64.device, torch.float64)).sum(1)
            bias = shift if bias is None else bias + shift
        weight = (w64 * self.gamma.detach().to(w64.device, torch.float64)).to(self.weight.dtype)
        return weight, None if bias is None else bias.to((self.weight if self.bias is None else self.bias).dtype)

    def apply(self) -> None:
        weight, bias = self.folded()
        linear = self.linear
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.creates_bias:
                linear.bias = nn.Parameter(bias.to(linear.weight.device), requires_grad=linear.weight.requires_grad)
            elif bias is not None:
                linear.bias.copy_(bias)

    def untouched(self) -> bool:
        """Whether the reader still holds exactly the folded values, in its current dtype (the model may have been
        cast since: then the folded values are compared cast the same way).  Always true on the meta device."""
        if self.linear.weight.is_meta:
            return True
        if self.weight.is_meta:
            return False
        weight, bias = self.folded()
        current = self.linear.weight.detach()
        if not torch.equal(current.to(weight.device), weight.to(current.dtype)):
            return False
        return bias is None or torch.equal(self.linear.bias.detach().to(bias.device), bias.to(self.linear.bias.dtype))

    def undo_problem(self) -> str | None:
        """Why ``undo`` cannot restore this reader (None: it can)."""
        if self.linear.weight.is_meta:
            return None
        if self.gamma.is_meta or (self.beta is not None and self.beta.is_meta):
            return ("its norm's gamma/beta hold no data (the model was converted on the meta device and materialized "
                    "since: the original norms were not part of it)")
        return None

    def undo(self) -> None:
        """Restore the original weight and bias exactly if untouched since the fold (in the reader's current dtype
        and device); else unfold the current ones (W = W' / gamma, b = b' - W beta), so that the reverted model
        computes what the trained one computes.  A bias the fold created is removed (it is frozen: only all-frozen
        folds create one)."""
        linear = self.linear
        untouched = self.untouched()
        with torch.no_grad():
            if untouched:
                linear.weight.copy_(self.weight)
                if self.bias is not None:
                    linear.bias.copy_(self.bias)
            else:
                device = linear.weight.device
                weight = linear.weight.double() / self.gamma.detach().to(device, torch.float64)
                if self.bias is not None:
                    bias = linear.bias.double()
                    if self.beta is not None:
                        bias = bias - weight @ self.beta.detach().to(device, torch.float64)
                    linear.bias.copy_(bias)
                linear.weight.copy_(weight)
        if self.creates_bias:
            linear.register_parameter("bias", None)


def fold_into_linear(linear: nn.Linear, gamma: Tensor, beta: Tensor | None, name: str = "the reader") -> LinearFold:
    """W <- W diag(gamma), b <- b + W beta, in place (a new bias Parameter, with W's requires_grad, if needed)."""
    fold = LinearFold(linear, gamma, beta, _stash(linear.weight), None if linear.bias is None else _stash(linear.bias),
                      name)
    fold.apply()
    return fold


def adapter_swaps(reader: nn.Module, gamma: Tensor, beta: Tensor | None) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, key, new module) for every LoRA adapter of ``reader`` (none for a plain linear): see the docstring."""
    if reader is base_linear(reader):
        return []
    swaps = []
    for key, lora_a in reader.lora_A.items():
        dropout = reader.lora_dropout[key]
        if isinstance(dropout, nn.Identity):
            swaps.append((reader.lora_A, key, AffineInputLinear(lora_a, gamma, beta)))
        else:
            swaps.append((reader.lora_dropout, key, AffineThenDropout(dropout, gamma, beta)))
    return swaps
