"""Converted models under torch.func: per-sample gradients (functional_call + vmap(grad)) of a converted model are each
sample's own gradients, and a converted peft LoRA model with dropout gives the same gradients under torch.func.grad
as under autograd (the same masks).  Before, every converted model raised "must override the setup_context
staticmethod" there."""

from unittest import mock

import pytest
import torch
from convert_models import build, grads
from peft import LoraConfig, get_peft_model
from torch.func import functional_call, grad, vmap

from approxbp.conversion import convert
from approxbp.ops import lora_delta

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch.func's import


def sample_loss(model, params, ids):
    logits = functional_call(model, params, (ids.unsqueeze(0),))[0]
    return (logits.float() ** 2).mean()


@pytest.mark.parametrize("name", ["bert-mlm", "llama"])
def test_per_sample_gradients_by_vmap_are_each_samples_own(name):
    model, inputs = build(name, dtype=torch.float64)
    convert(model)
    ids = torch.cat([inputs["input_ids"], inputs["input_ids"].flip(1)])
    params = {n: p.detach() for n, p in model.named_parameters()}
    per_sample = vmap(grad(lambda p, x: sample_loss(model, p, x)), in_dims=(None, 0))(params, ids)
    for k in range(ids.shape[0]):
        model.zero_grad()
        sample_loss(model, dict(model.named_parameters()), ids[k]).backward()
        for n, g in grads(model).items():
            torch.testing.assert_close(per_sample[n][k], g, rtol=1e-10, atol=1e-12, msg=n)


def test_lora_dropout_model_under_grad_matches_autograd():
    model, inputs = build("llama")
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, init_lora_weights=False,
                                             target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"])).train()
    convert(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(3)
    with mock.patch.object(lora_delta, "_lora_delta_composite", wraps=lora_delta._lora_delta_composite) as composite:
        ours = grad(lambda p: (functional_call(model, p, (inputs["input_ids"],))[0] ** 2).mean())(trainable)
    assert composite.call_count == 8  # the packed LoRA path, in its torch.func form: 4 targets x 2 layers
    torch.manual_seed(3)
    (model(inputs["input_ids"])[0] ** 2).mean().backward()
    for n, p in trainable.items():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)
