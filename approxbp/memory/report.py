"""The profiler's result as a JSON-ready dict (schema in ``approxbp.memory``) and as a text table."""

from __future__ import annotations

from dataclasses import asdict

from approxbp.memory.analytic import block_needs, minimum_by_kind
from approxbp.memory.kinds import KINDS
from approxbp.memory.measurement import CHECKPOINTED, Measurement, Setting, gated_dtype_of, variant_options
from approxbp.memory.models import DTYPES
from approxbp.memory.profile import Profile, Storage

SCHEMA = "approxbp.memory/1"
LORA_TUNINGS = ("lora", "lora-fa", "qlora")


def _ratio(value: float, unit: float) -> float:
    return round(value / unit, 6)


def _reduction(value: float, baseline: float) -> float | None:
    return round(100.0 * (value - baseline) / baseline, 2) if baseline else None


def _storage(s: Storage, tokens: int, d_bytes: int) -> dict:
    return {"kind": s.kind, "bytes": s.nbytes, "bytes_per_token": _ratio(s.nbytes, tokens),
            "d_per_token": _ratio(s.nbytes, tokens * d_bytes), "dtype": str(s.dtype).removeprefix("torch."),
            "shape": list(s.shape), "savers": s.describe()}


def _analytic(m: Measurement, variant: str, d_bytes: int) -> dict | None:
    if m.shape is None or variant in CHECKPOINTED:
        return None
    options = variant_options(variant) or {}
    needs = block_needs(m.shape, 2 if options.get("approx") else None, options.get("norms") == "ms")
    per_kind = minimum_by_kind(needs)
    total = sum(per_kind.values())
    return {"bytes_per_token": per_kind, "total_bytes_per_token": total,
            "d_per_token": {k: _ratio(v, d_bytes) for k, v in per_kind.items()},
            "total_d_per_token": _ratio(total, d_bytes),
            "tensors": [{"name": n.name, "bytes_per_token": n.bytes_per_token, "kind": n.kind}
                        for n in needs if n.readers]}


def _convert_options(setting: Setting, variant: str) -> dict | None:
    """The approxbp.convert options the variant ran with (gated_dtype by its name, e.g. "bf16")."""
    options = variant_options(variant)
    gated = gated_dtype_of(setting, options)
    return options if gated is None else {**options, "gated_dtype": gated}


def _variant(m: Measurement, setting: Setting, variant: str, profile: Profile, baseline: Profile, block: int,
             tokens: int, d_bytes: int) -> dict:
    per_block = profile.bytes_by_kind(block)
    block_total = sum(per_block.values())
    base_block = sum(baseline.bytes_by_kind(block).values())
    outside = profile.bytes_by_kind(None)
    recomputed = m.profiles.get(CHECKPOINTED.get(variant))
    peak = None if recomputed is None else block_total + sum(recomputed.bytes_by_kind(block).values())
    return {
        "convert": _convert_options(setting, variant),
        "checkpointing": variant in CHECKPOINTED,
        "conversion": m.conversions.get(variant),
        "block": {"bytes": per_block, "total": block_total,
                  "bytes_per_token": {k: _ratio(v, tokens) for k, v in per_block.items()},
                  "d_per_token": {k: _ratio(v, tokens * d_bytes) for k, v in per_block.items()},
                  "total_d_per_token": _ratio(block_total, tokens * d_bytes)},
        "blocks_total": [sum(profile.bytes_by_kind(i).values()) for i in range(profile.num_blocks)],
        "outside_blocks": {"bytes": outside, "total": sum(outside.values())},
        "model": {"bytes": profile.bytes_by_kind(), "total": profile.total},
        "shared": profile.shared,
        "reduction_pct": {"block": _reduction(block_total, base_block),
                          "model": _reduction(profile.total, baseline.total)},
        "recompute_peak": None if peak is None else {"total": peak,
                                                      "total_d_per_token": _ratio(peak, tokens * d_bytes)},
        "analytic": _analytic(m, variant, d_bytes),
        "storages": [_storage(s, tokens, d_bytes) for s in profile.block_storages(block)],
    }


def to_json(name: str, setting: Setting, m: Measurement) -> dict:
    """The JSON document of one measurement (see the schema in ``approxbp.memory``)."""
    c, baseline = m.config, m.profiles["baseline"]
    element = DTYPES[setting.dtype].itemsize
    d_bytes = c.hidden_size * element
    tokens = setting.batch * setting.seq
    block = baseline.num_blocks // 2
    heads = c.num_attention_heads
    return {
        "schema": SCHEMA,
        "model": {"name": name, "class": m.model_class, "model_type": c.model_type, "blocks": baseline.num_blocks,
                  "hidden": c.hidden_size, "intermediate": getattr(c, "intermediate_size", None), "heads": heads,
                  "kv_heads": getattr(c, "num_key_value_heads", None) or heads},
        "setting": {"tuning": setting.tuning, "batch": setting.batch, "seq": setting.seq, "tokens": tokens,
                    "dtype": setting.dtype, "element_bytes": element, "kernels": setting.kernels,
                    "fake": setting.fake, "checkpointing": setting.checkpointing, "gated_dtype": setting.gated_dtype,
                    "lora": asdict(setting.lora) if setting.tuning in LORA_TUNINGS else None},
        "kinds": list(KINDS),
        "block_index": block,
        "variants": {v: _variant(m, setting, v, p, baseline, block, tokens, d_bytes) for v, p in m.profiles.items()},
        "unavailable": m.unavailable,
    }
