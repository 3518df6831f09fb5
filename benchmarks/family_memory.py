"""Activation memory of every family ``convert()`` covers at a real size, through the profiler (the README's
families table, "real size" column).

Configs are written from the public model cards' sizes (by hand: nothing is downloaded) into ``--configs``; each runs
``python -m approxbp.memory --model DIR/NAME --batch 8 --seq SEQ --dtype bf16 --json`` (full tuning, fake tensors,
GPU kernels), and the middle block's d per token per variant and the reductions go into one JSON.

    python benchmarks/family_memory.py --configs /tmp/family_configs [--out benchmarks/data/family_memory.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from approxbp.artifacts import write_json

DEFAULT_OUT = Path("benchmarks/data/family_memory.json")
BATCH, DTYPE = 8, "bf16"


def configs() -> dict:
    """{name: (transformers config, sequence length)} at the model cards' sizes."""
    import transformers as T

    return {
        "gemma-2b": (
            T.GemmaConfig(
                hidden_size=2048,
                intermediate_size=16384,
                num_hidden_layers=18,
                num_attention_heads=8,
                num_key_value_heads=1,
                head_dim=256,
                vocab_size=256000,
                max_position_embeddings=8192,
            ),
            512,
        ),
        "gemma2-2b": (
            T.Gemma2Config(
                hidden_size=2304,
                intermediate_size=9216,
                num_hidden_layers=26,
                num_attention_heads=8,
                num_key_value_heads=4,
                head_dim=256,
                vocab_size=256000,
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
            ),
            512,
        ),
        "gemma3-1b": (
            T.Gemma3TextConfig(
                hidden_size=1152,
                intermediate_size=6912,
                num_hidden_layers=26,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=256,
                vocab_size=262144,
            ),
            512,
        ),
        "phi3-mini": (
            T.Phi3Config(
                hidden_size=3072,
                intermediate_size=8192,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=32,
                vocab_size=32064,
                max_position_embeddings=4096,
            ),
            512,
        ),
        "mixtral-8x7b": (
            T.MixtralConfig(
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                num_local_experts=8,
                num_experts_per_tok=2,
                vocab_size=32000,
            ),
            512,
        ),
        "qwen1.5-moe-a2.7b": (
            T.Qwen2MoeConfig(
                hidden_size=2048,
                intermediate_size=5632,
                num_hidden_layers=24,
                num_attention_heads=16,
                num_key_value_heads=16,
                num_experts=60,
                num_experts_per_tok=4,
                moe_intermediate_size=1408,
                shared_expert_intermediate_size=5632,
                vocab_size=151936,
            ),
            512,
        ),
        "qwen3-30b-a3b": (
            T.Qwen3MoeConfig(
                hidden_size=2048,
                intermediate_size=6144,
                num_hidden_layers=48,
                num_attention_heads=32,
                num_key_value_heads=4,
                head_dim=128,
                num_experts=128,
                num_experts_per_tok=8,
                moe_intermediate_size=768,
                vocab_size=151936,
            ),
            512,
        ),
        "olmo2-7b": (
            T.Olmo2Config(
                hidden_size=4096,
                intermediate_size=11008,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=32,
                vocab_size=100352,
                max_position_embeddings=4096,
            ),
            512,
        ),
        "gpt2": (T.GPT2Config(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257), 512),
        "pythia-1.4b": (
            T.GPTNeoXConfig(
                hidden_size=2048,
                intermediate_size=8192,
                num_hidden_layers=24,
                num_attention_heads=16,
                vocab_size=50304,
                rotary_pct=0.25,
                max_position_embeddings=2048,
            ),
            512,
        ),
        "granite-3.0-2b": (
            T.GraniteConfig(
                hidden_size=2048,
                intermediate_size=8192,
                num_hidden_layers=40,
                num_attention_heads=32,
                num_key_value_heads=8,
                vocab_size=49155,
                max_position_embeddings=4096,
            ),
            512,
        ),
        "clip-vit-l14-vision": (
            T.CLIPVisionConfig(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                image_size=224,
                patch_size=14,
            ),
            257,
        ),
        "clip-vit-l14-text": (
            T.CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                vocab_size=49408,
            ),
            77,
        ),
        "siglip-b16-vision": (
            T.SiglipVisionConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                image_size=224,
                patch_size=16,
            ),
            196,
        ),
        "siglip-b16-text": (
            T.SiglipTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=64,
                vocab_size=32000,
            ),
            64,
        ),
        "dinov2-base": (
            T.Dinov2Config(
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                mlp_ratio=4,
                image_size=224,
                patch_size=14,
            ),
            257,
        ),
        "deberta-v3-base": (
            T.DebertaV2Config(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                vocab_size=128100,
                relative_attention=True,
                position_buckets=256,
                max_relative_positions=-1,
                pos_att_type=["p2c", "c2p"],
                norm_rel_ebd="layer_norm",
                type_vocab_size=0,
                max_position_embeddings=512,
            ),
            512,
        ),
        "modernbert-base": (
            T.ModernBertConfig(
                hidden_size=768,
                intermediate_size=1152,
                num_hidden_layers=22,
                num_attention_heads=12,
                vocab_size=50368,
                global_attn_every_n_layers=3,
                local_attention=128,
            ),
            512,
        ),
        "t5-v1.1-base": (
            T.T5Config(
                d_model=768,
                d_ff=2048,
                d_kv=64,
                num_layers=12,
                num_heads=12,
                vocab_size=32128,
                feed_forward_proj="gated-gelu",
                decoder_start_token_id=0,
            ),
            512,
        ),
        "whisper-small-encoder": (
            T.WhisperConfig(
                d_model=768,
                encoder_layers=12,
                decoder_layers=12,
                encoder_attention_heads=12,
                decoder_attention_heads=12,
                encoder_ffn_dim=3072,
                decoder_ffn_dim=3072,
                num_mel_bins=80,
                max_source_positions=1500,
                vocab_size=51865,
            ),
            1500,
        ),
        "swin-tiny": (
            T.SwinConfig(
                embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, image_size=224, patch_size=4
            ),
            3136,
        ),
        "opt-125m": (
            T.OPTConfig(
                hidden_size=768,
                num_hidden_layers=12,
                ffn_dim=3072,
                num_attention_heads=12,
                vocab_size=50272,
                max_position_embeddings=2048,
                word_embed_proj_dim=768,
            ),
            512,
        ),
    }


def profile(folder: Path, name: str, seq: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "approxbp.memory",
        "--model",
        str(folder / name),
        "--batch",
        str(BATCH),
        "--seq",
        str(seq),
        "--dtype",
        DTYPE,
        "--json",
    ]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def row(name: str, doc: dict) -> dict:
    variants = doc["variants"]
    return {
        "model": name,
        "class": doc["model"]["class"],
        "seq": doc["setting"]["seq"],
        "d_per_token": {k: v["block"]["total_d_per_token"] for k, v in variants.items()},
        "both_block_reduction_pct": variants["both"]["reduction_pct"]["block"],
        "both_model_reduction_pct": variants["both"]["reduction_pct"]["model"],
        "model_gib": {k: v["model"]["total"] / 2**30 for k, v in variants.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=Path, required=True, help="folder the configs are written into")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    rows = []
    for name, (config, seq) in configs().items():
        config.save_pretrained(args.configs / name)
        rows.append(row(name, profile(args.configs, name, seq)))
        print(f"{name}: both {rows[-1]['both_block_reduction_pct']:+.1f}% per block", flush=True)
    write_json(
        args.out,
        {
            "command": "python benchmarks/family_memory.py --configs DIR",
            "batch": BATCH,
            "dtype": DTYPE,
            "tuning": "full",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
