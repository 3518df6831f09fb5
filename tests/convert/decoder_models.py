"""Tiny models of the decoder families of issue 13 (hidden 32, 2 layers, HF ``from_config``, nothing downloaded), the
kinds of change ``convert`` makes to each, and the gradients of the original parameters from a converted model's."""

from __future__ import annotations

import torch
from convert_models import VOCAB, randomise_norms
from torch import nn

LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=64)
MOE = dict(num_experts_per_tok=2, output_router_logits=False)
TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # inside the tiny vocabulary


def _builders() -> dict:
    import transformers as T

    gemma = dict(LLAMA_LIKE, head_dim=16)
    gpt2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0)
    neox = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                hidden_dropout=0.0, attention_dropout=0.0)
    return {
        "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(**gemma)),
        "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**gemma)),
        "gemma3": lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(**gemma)),
        "phi3": lambda: T.Phi3ForCausalLM(T.Phi3Config(**LLAMA_LIKE, **TOKENS)),
        "mixtral": lambda: T.MixtralForCausalLM(T.MixtralConfig(**LLAMA_LIKE, **MOE, num_local_experts=4)),
        "qwen2-moe": lambda: T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(**LLAMA_LIKE, **MOE, num_experts=4,
                                                                    moe_intermediate_size=32,
                                                                    shared_expert_intermediate_size=64)),
        "qwen3-moe": lambda: T.Qwen3MoeForCausalLM(T.Qwen3MoeConfig(**LLAMA_LIKE, **MOE, num_experts=4,
                                                                    moe_intermediate_size=32, head_dim=16)),
        "olmo2": lambda: T.Olmo2ForCausalLM(T.Olmo2Config(**LLAMA_LIKE, **TOKENS)),
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(**gpt2, **TOKENS)),
        "gpt-neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**neox, use_parallel_residual=True)),
        "gpt-neox-sequential": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**neox, use_parallel_residual=False)),
        "granite": lambda: T.GraniteForCausalLM(T.GraniteConfig(**LLAMA_LIKE, residual_multiplier=0.5,
                                                                embedding_multiplier=2.0, attention_multiplier=0.3)),
    }


DECODERS = ("gemma", "gemma2", "gemma3", "phi3", "mixtral", "qwen2-moe", "qwen3-moe", "olmo2", "gpt2", "gpt-neox",
            "gpt-neox-sequential", "granite")
UNGATED = ("gpt2", "gpt-neox", "gpt-neox-sequential")  # one activation module per MLP, the others are gated
NO_FOLDS = ("olmo2",)  # no pre-norm: every norm is kept


def expected_kinds(name: str, approx: str | None) -> set[str]:
    """The kinds of change ``convert(approx=approx, norms="ms")`` makes to model ``name``."""
    kinds = set() if name in NO_FOLDS else {"folded-norm"}
    if approx:
        kinds.add("activation" if name in UNGATED else "gated-mlp")
    return kinds


def build(name: str, seed: int = 0) -> tuple[nn.Module, dict]:
    """(fp32 model in eval mode with randomised norm scales and biases, token inputs): weight = 1 + N(0, 0.5^2),
    bias = N(0, 0.2^2), so that folding is not trivial."""
    torch.manual_seed(seed)
    model = _builders()[name]()
    randomise_norms(model)
    return model.float().eval(), {"input_ids": torch.randint(1, VOCAB, (2, 8))}
