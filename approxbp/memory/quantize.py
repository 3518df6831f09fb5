"""QLoRA's base layers for the profiler: the linear layers of the blocks as bitsandbytes NF4 ``Linear4bit`` layers
with double quantization and a 16-bit compute dtype, as ``BitsAndBytesConfig(load_in_4bit=True,
bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=...)`` loads them (HF leaves the
head and embeddings unquantized).

Real weights are quantized by bitsandbytes (on CPU).  Meta weights get a quantization state of the same shapes with
no data (packed weight ((N K + 1) // 2, 1) uint8; per 64-block absmax as uint8 codes, their fp32 offset; per
256-block fp32 absmax of those, a 256-entry code; the 16-entry NF4 code), which ``materialize`` turns into fake
tensors: bitsandbytes registers fake kernels for its ops, so a fake run follows the real one.  4-bit weights are
parameters, never activations: bitsandbytes' MatMul4Bit keeps the packed weight for backward (as an attribute of its
context, not a saved tensor) and no input, so a frozen 4-bit base layer keeps nothing.
"""

from __future__ import annotations

import bitsandbytes as bnb
import torch
from bitsandbytes.functional import QuantState
from torch import nn

from approxbp.memory.profile import find_blocks

BLOCKSIZE = 64  # bitsandbytes' 4-bit block
NESTED_BLOCKSIZE = 256  # its double-quantization block


def _empty_state(shape: torch.Size, dtype: torch.dtype, device: torch.device | str) -> QuantState:
    """A double-quantized NF4 state of a ``shape`` weight (original dtype ``dtype``) whose tensors hold no data
    (on meta, the offset is a real CPU zero: ``state_dict`` reads it with ``.item()``)."""
    blocks = -(-shape.numel() // BLOCKSIZE)
    nested = QuantState(torch.empty(-(-blocks // NESTED_BLOCKSIZE), device=device),
                        code=torch.empty(256, device=device), blocksize=NESTED_BLOCKSIZE, dtype=torch.float32)
    offset = torch.zeros((), device="cpu") if device == "meta" else torch.empty((), device=device)
    return QuantState(torch.empty(blocks, dtype=torch.uint8, device=device), shape=shape,
                      code=torch.empty(16, device=device), blocksize=BLOCKSIZE, quant_type="nf4", dtype=dtype,
                      offset=offset, state2=nested)


def _params(data: torch.Tensor, state: QuantState) -> bnb.nn.Params4bit:
    return bnb.nn.Params4bit(data, requires_grad=False, quant_state=state, blocksize=BLOCKSIZE,
                             compress_statistics=True, quant_type="nf4", bnb_quantized=True)


def quantized_linear(linear: nn.Linear, compute_dtype: torch.dtype) -> bnb.nn.Linear4bit:
    """``linear`` as a frozen NF4 Linear4bit (double quantization) computing in ``compute_dtype``."""
    weight = linear.weight.detach()
    new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, linear.bias is not None, compute_dtype,
                            compress_statistics=True, quant_type="nf4", device="meta")
    if weight.is_meta:
        packed = torch.empty((weight.numel() + 1) // 2, 1, dtype=torch.uint8, device="meta")
        new.weight = _params(packed, _empty_state(weight.shape, weight.dtype, "meta"))
    else:
        new.weight = bnb.nn.Params4bit(weight, requires_grad=False, blocksize=BLOCKSIZE, compress_statistics=True,
                                       quant_type="nf4")._quantize(weight.device)
    if linear.bias is not None:
        new.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    return new


def quantize_blocks(model: nn.Module, compute_dtype: torch.dtype) -> int:
    """Replace every nn.Linear inside the model's transformer blocks by ``quantized_linear``; returns how many."""
    replaced = 0
    for block in find_blocks(model):
        for name, module in list(block.named_modules()):
            if type(module) is nn.Linear:
                parent_name, _, attr = name.rpartition(".")
                setattr(block.get_submodule(parent_name) if parent_name else block, attr,
                        quantized_linear(module, compute_dtype))
                replaced += 1
    return replaced


def materialize_4bit(param: bnb.nn.Params4bit, device: str) -> nn.Parameter:
    """A frozen parameter of ``param``'s shape with uninitialised data on ``device`` (fake under ``fake_mode()``)
    carrying a quantization state of the same shapes: what Linear4bit's forward reads (a Params4bit cannot wrap a
    fake tensor)."""
    state = param.quant_state
    new = nn.Parameter(torch.empty(param.shape, dtype=param.dtype, device=device), requires_grad=False)
    new.quant_state = _empty_state(state.shape, state.dtype, device)
    return new
