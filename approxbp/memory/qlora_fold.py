"""``python -m approxbp.memory.qlora_fold``: the two routes to MS-BP norms in QLoRA, measured on a small LLaMA
quantized to NF4 by bitsandbytes on CPU (d 256, 2 blocks, norm gammas drawn from [0.5, 1.5]; LoRA r 8 on all seven
linears, dropout 0.1; batch 2 x 64 tokens; nothing downloaded).

- on the fly: ``convert`` on the QLoRA model (gamma applied on the 4-bit readers' input,
  ``approxbp.conversion.quantized``);
- folded: ``fold_norms_for_quantization`` on the full-precision model, then quantize, LoRA, ``convert``.

Prints the bytes autograd keeps (whole model), the loss and the largest logit difference against the unconverted
QLoRA model under the same seed, and how far the folded route's NF4 weights are from the unfolded ones:
||deq(Q(W diag(gamma))) - deq(Q(W)) diag(gamma)|| / ||W diag(gamma)|| over the norms' readers, beside the NF4 error
itself, ||deq(Q(W)) diag(gamma) - W diag(gamma)|| / ||W diag(gamma)||.
"""

from __future__ import annotations

import tempfile
import warnings

import torch

CONFIG = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=4, vocab_size=512, max_position_embeddings=128)
READERS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


def _quantized(folder: str):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    model = LlamaForCausalLM.from_pretrained(folder, quantization_config=config, device_map="cpu")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(1)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=[*READERS, "o_proj", "down_proj"])
    return get_peft_model(model, lora).train()


def _run(model, ids: torch.Tensor) -> tuple[float, torch.Tensor, int]:
    from approxbp.saved import record_saved

    torch.manual_seed(5)
    with record_saved(model) as record:
        out = model(input_ids=ids, labels=ids)
    return out.loss.item(), out.logits.detach(), record.bytes


def _dequantized(model) -> dict[str, torch.Tensor]:
    import bitsandbytes as bnb

    layers = {name.removesuffix(".base_layer"): m for name, m in model.named_modules()
              if isinstance(m, bnb.nn.Linear4bit)}
    return {name: bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).double()
            for name, m in layers.items() if name.endswith(READERS)}


def measure() -> dict:
    """The figures the module docstring lists, as a dict."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from approxbp.conversion import convert
    from approxbp.conversion.quantized import fold_norms_for_quantization

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.endswith("layernorm"):
                m.weight.uniform_(0.5, 1.5)
    gammas = {f"layers.{i}.{attn}": layer.input_layernorm.weight.detach().double() if attn == "self_attn" else
              layer.post_attention_layernorm.weight.detach().double()
              for i, layer in enumerate(model.model.layers) for attn in ("self_attn", "mlp")}
    weights = {n: m.weight.detach().double() for n, m in model.named_modules() if n.endswith(READERS)}
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 64), generator=torch.Generator().manual_seed(2))
    with tempfile.TemporaryDirectory() as plain, tempfile.TemporaryDirectory() as folded:
        model.save_pretrained(plain)
        fold_norms_for_quantization(model)
        model.save_pretrained(folded)
        original, on_the_fly, folded_model = _quantized(plain), _quantized(plain), _quantized(folded)
        unfolded_nf4, folded_nf4 = _dequantized(original), _dequantized(folded_model)
        convert(on_the_fly, approx=None)
        convert(folded_model, approx=None)
        runs = {name: _run(m, ids) for name, m in
                (("unconverted", original), ("on the fly", on_the_fly), ("folded", folded_model))}
    change, error, scale = 0.0, 0.0, 0.0
    for name, w in weights.items():
        gamma = next(g for key, g in gammas.items() if f"{key}." in name + ".")
        target = w * gamma
        key = next(k for k in unfolded_nf4 if k.endswith(name.removeprefix("model.")))
        change += (folded_nf4[key] - unfolded_nf4[key] * gamma).square().sum().item()
        error += (unfolded_nf4[key] * gamma - target).square().sum().item()
        scale += target.square().sum().item()
    logits = runs["unconverted"][1]
    return {"saved_bytes": {k: r[2] for k, r in runs.items()},
            "loss": {k: r[0] for k, r in runs.items()},
            "max_logit_difference": {k: (r[1] - logits).abs().max().item() for k, r in runs.items()},
            "nf4_weight_change": (change / scale) ** 0.5, "nf4_error": (error / scale) ** 0.5}


def main() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = measure()
    print(__doc__.split("\n\n")[0].split(": ", 1)[1])
    for route in result["loss"]:
        print(f"  {route:<12} saved {result['saved_bytes'][route] / 2**20:7.3f} MiB   loss {result['loss'][route]:.6f}"
              f"   max |logit - unconverted| {result['max_logit_difference'][route]:.3g}")
    print(f"  NF4 weights of the norms' readers: folded vs unfolded {result['nf4_weight_change']:.4f} relative "
          f"(the NF4 error itself: {result['nf4_error']:.4f})")


if __name__ == "__main__":
    main()
