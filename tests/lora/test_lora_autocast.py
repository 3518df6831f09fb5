"""The packed LoRA path under CPU bf16 autocast (fp32 master weights): peft's forward under autocast to float
rounding (x cast to A's dtype and dropped there, A's and B's matmuls in bf16, fp32 gradients for fp32 weights), the
same RNG draws, fewer saved bytes."""

import copy

import pytest
import torch
from lora_models import grads, lora_model, loss, relative

from approxbp.conversion import convert
from approxbp.conversion.lora_path import install
from approxbp.modules.lora import LoraForward
from approxbp.saved import record_saved

BF16_ULP = 2.0**-8  # bf16's relative rounding: both sides round the same products, in possibly different orders


def autocast_step(model, *inputs, seed: int = 3):
    """(output, input gradients, parameter gradients, saved bytes, next random numbers) of a forward under bf16
    autocast and a backward outside it, as training loops run them."""
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16), record_saved(model) as saved:
        y = model(*inputs) if isinstance(inputs[0], torch.Tensor) else loss(model, inputs[0])
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
    (y * weights).float().sum().backward()
    input_grads = [x.grad for x in inputs if isinstance(x, torch.Tensor)]
    found = y.detach(), input_grads, grads(model), saved.bytes, torch.rand(4)
    model.zero_grad(set_to_none=True)
    return found


def assert_same(got, expected, tolerance: float) -> None:
    (y, dx, g, _, rng), (y0, dx0, g0, _, rng0) = got, expected
    assert torch.equal(rng, rng0)  # the same draws: the same masks
    assert y.dtype == y0.dtype and relative(y, y0) <= tolerance
    assert [t.dtype for t in dx] == [t.dtype for t in dx0]
    assert all(relative(a, b) <= tolerance for a, b in zip(dx, dx0, strict=True))
    assert {k: t.dtype for k, t in g.items()} == {k: t.dtype for k, t in g0.items()}
    assert max(relative(g[k], g0[k]) for k in g0) <= tolerance


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_layer_under_autocast_is_pefts(dropout, x_dtype):
    """One lora.Linear: fp32 weights, x in fp32 (a norm's output) or bf16 (an autocast matmul's output)."""
    model, _ = lora_model("llama", dropout)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    reference = copy.deepcopy(layer)
    install([(layer, LoraForward)])
    x = torch.randn(2, 5, layer.in_features, dtype=x_dtype)
    got, expected = (autocast_step(m, x.clone().requires_grad_(True)) for m in (layer, reference))
    assert_same(got, expected, BF16_ULP)
    assert got[2]["lora_A.default.weight"].dtype == torch.float32
    if dropout:  # peft: A's bf16 copy of drop(x) and the mask; here x itself and its bits
        assert got[3] < expected[3]


@pytest.mark.parametrize("name", ["llama", "vit"])
def test_models_under_autocast_are_pefts_and_save_less(name):
    """The packed path alone (norms kept) against peft on the same model, dropout 0.1 on the adapters and the
    residual stream; then MS-BP with and without the packed path: same loss, fewer bytes."""
    model, inputs = lora_model(name, 0.1)
    packed, ms_packed, ms_unpacked = (copy.deepcopy(model) for _ in range(3))
    layers = [m for m in packed.modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A")]
    assert len(layers) == 2 * 4
    install([(m, LoraForward) for m in layers])  # convert() always converts norms or activations too
    expected = autocast_step(model, inputs)
    alone = autocast_step(packed, inputs)
    assert_same(alone, expected, 4 * BF16_ULP)
    assert alone[3] < expected[3]
    convert(ms_packed, approx=None)
    convert(ms_unpacked, approx=None, lora=None, dropout=None)
    got, unpacked = autocast_step(ms_packed, inputs), autocast_step(ms_unpacked, inputs)
    assert_same(got, unpacked, 4 * BF16_ULP)
    assert got[3] < unpacked[3] < expected[3]
