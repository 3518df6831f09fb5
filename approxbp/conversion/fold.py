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
from approxbp.conversion.rules import READERS, ReaderLayout

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def lora_layer_class() -> type | None:
    """peft's LoraLayer, if peft is imported (a model cannot hold peft layers otherwise)."""
    return sys.modules["peft"].tuners.lora.LoraLayer if "peft" in sys.modules else None


def layout(linear: nn.Module) -> ReaderLayout | None:
    """Where a linear map keeps its weight and bias: nn.Linear's, or a ``rules.READERS`` entry (None: unknown)."""
    return ReaderLayout() if isinstance(linear, nn.Linear) else READERS.get(type(linear).__name__)


def weight_and_bias(linear: nn.Module) -> tuple[Tensor, Tensor | None]:
    found = layout(linear)
    return getattr(linear, found.weight), getattr(linear, found.bias) if found.bias else None


def along_inputs(t: Tensor, weight: Tensor, in_dim: int) -> Tensor:
    """``t`` (one value per input feature) shaped to broadcast along axis ``in_dim`` of ``weight``."""
    return t.reshape([-1 if d == in_dim % weight.dim() else 1 for d in range(weight.dim())])


def base_linear(reader: nn.Module) -> nn.Module | None:
    """The linear map under ``reader`` (itself, or a LoRA layer's base layer): an nn.Linear or a ``READERS`` class."""
    lora = lora_layer_class()
    linear = reader.base_layer if lora is not None and isinstance(reader, lora) else reader
    return linear if layout(linear) is not None else None


def reader_problem(reader: nn.Module, width: int) -> str | None:
    """Why the norm's affine cannot be folded into ``reader`` (None: it can)."""
    linear = base_linear(reader)
    if linear is None:
        return f"reader {type(reader).__name__} is not a linear layer"
    weight, in_dim = getattr(linear, layout(linear).weight), layout(linear).in_dim
    if weight.dtype not in SUPPORTED_DTYPES:
        return f"reader weight is {weight.dtype} (quantized?)"
    if getattr(linear, "is_transposed", False) or getattr(linear, "has_bias", False):
        return "its expert weights are transposed or have biases (only (experts, out, in) without bias is folded)"
    if weight.shape[in_dim] != width:
        return f"reader has {weight.shape[in_dim]} input features, the norm {width}"
    if reader is not linear:
        if not isinstance(linear, nn.Linear):
            return f"its LoRA adapter wraps a {type(linear).__name__}; folded LoRA merges are for nn.Linear only"
        return adapter_problem(reader)
    return None


def adapter_problem(reader: nn.Module) -> str | None:
    """Why the peft LoRA layer ``reader`` cannot read a folded norm's y through AffineInputLinear /
    AffineThenDropout (None: it can)."""
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
    can tell an untouched reader (restored exactly) from a trained one (unfolded).  ``linear`` is an nn.Linear or a
    ``READERS`` class (GPT-2's Conv1D, MoE routers, stacked experts): gamma scales its weight along the input axis."""

    linear: nn.Module
    gamma: Tensor
    beta: Tensor | None
    weight: Tensor
    bias: Tensor | None
    name: str = "the reader"

    @property
    def creates_bias(self) -> bool:
        return self.bias is None and self.beta is not None

    def _along(self, t: Tensor, like: Tensor) -> Tensor:
        return along_inputs(t.detach().to(like.device, torch.float64), like, layout(self.linear).in_dim)

    def _shift(self, w64: Tensor) -> Tensor:
        """W beta: the weight times beta, summed over the input axis."""
        return (w64 * self._along(self.beta, w64)).sum(layout(self.linear).in_dim % w64.dim())

    def folded(self) -> tuple[Tensor, Tensor | None]:
        """(W diag(gamma), b + W beta), in the weight's and bias's dtypes."""
        w64 = self.weight.double()
        bias = None if self.bias is None else self.bias.double()
        if self.beta is not None:
            shift = self._shift(w64)
            bias = shift if bias is None else bias + shift
        weight = (w64 * self._along(self.gamma, w64)).to(self.weight.dtype)
        return weight, None if bias is None else bias.to((self.weight if self.bias is None else self.bias).dtype)

    def apply(self) -> None:
        weight, bias = self.folded()
        current, current_bias = weight_and_bias(self.linear)
        with torch.no_grad():
            current.copy_(weight)
            if self.creates_bias:
                self.linear.bias = nn.Parameter(bias.to(current.device), requires_grad=current.requires_grad)
            elif bias is not None:
                current_bias.copy_(bias)

    def untouched(self) -> bool:
        """Whether the reader still holds exactly the folded values, in its current dtype (the model may have been
        cast since: then the folded values are compared cast the same way).  Always true on the meta device."""
        current, current_bias = (t.detach() if t is not None else None for t in weight_and_bias(self.linear))
        if current.is_meta:
            return True
        if self.weight.is_meta:
            return False
        weight, bias = self.folded()
        if not torch.equal(current.to(weight.device), weight.to(current.dtype)):
            return False
        return bias is None or torch.equal(current_bias.to(bias.device), bias.to(current_bias.dtype))

    def undo_problem(self) -> str | None:
        """Why ``undo`` cannot restore this reader (None: it can)."""
        if weight_and_bias(self.linear)[0].is_meta:
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
        untouched = self.untouched()
        current, current_bias = weight_and_bias(self.linear)
        with torch.no_grad():
            if untouched:
                current.copy_(self.weight)
                if self.bias is not None:
                    current_bias.copy_(self.bias)
            else:
                weight = current.double() / self._along(self.gamma, current)
                if self.bias is not None:
                    bias = current_bias.double()
                    if self.beta is not None:
                        bias = bias - self._shift(weight)
                    current_bias.copy_(bias)
                current.copy_(weight)
        if self.creates_bias:
            self.linear.register_parameter("bias", None)


def fold_into_linear(linear: nn.Module, gamma: Tensor, beta: Tensor | None, name: str = "the reader") -> LinearFold:
    """W <- W diag(gamma), b <- b + W beta, in place (a new bias Parameter, with W's requires_grad, if needed)."""
    weight, bias = weight_and_bias(linear)
    fold = LinearFold(linear, gamma, beta, _stash(weight), None if bias is None else _stash(bias), name)
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
