"""Render the profiler's JSON document as a text table, with the measured-minus-minimum differences explained by
the storages behind them."""

from __future__ import annotations

from approxbp.memory.kinds import KIND_LABELS

VARIANT_LABELS = {"baseline": "baseline", "approx": "Approx-BP", "ms": "MS-BP", "both": "both",
                  "ckpt": "checkpoint", "both+ckpt": "both+ckpt"}
_TOLERANCE_D = 0.01  # smaller differences are not explained (e.g. CPU LayerNorm keeps 16-bit statistics in 16 bits)
_SHOWN_STORAGES = 3


def _cell(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _row(label: str, cells: list[str]) -> str:
    return f"{label:<22}" + "".join(f"{c:>12}" for c in cells)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def render(doc: dict) -> str:
    """The table for one measurement: per block (the middle one) per token in d, the whole model in MiB."""
    model, setting, variants = doc["model"], doc["setting"], doc["variants"]
    names = list(variants)
    d_bytes = model["hidden"] * setting["element_bytes"]
    lora = setting["lora"]
    lora_text = (f" (r {lora['rank']}, dropout {lora['dropout']}, on {', '.join(lora['targets'])})" if lora else "")
    lines = [
        f"{model['name']}: {model['class']}, {model['blocks']} blocks, d = {model['hidden']}; tuning "
        f"{setting['tuning']}{lora_text}; batch {setting['batch']} x seq {setting['seq']}, {setting['dtype']}, "
        f"{setting['kernels']} kernels, {'fake' if setting['fake'] else 'real'} tensors"
        + (f"; gated MLP activation in {setting['gated_dtype']}" if setting.get("gated_dtype") else ""),
        "",
        f"Block {doc['block_index']} of {model['blocks']}: saved per token, in d = {model['hidden']} "
        f"{setting['dtype']} elements = {d_bytes} bytes"
        + (" (with fewer than 3 blocks this is an end block; the analytic minimum describes a middle one)"
           if model["blocks"] < 3 else ""),
        _row("", [VARIANT_LABELS[n] for n in names]),
    ]
    for kind in doc["kinds"]:
        values = [variants[n]["block"]["d_per_token"][kind] for n in names]
        if any(values):
            lines.append(_row(KIND_LABELS[kind], [_cell(v) for v in values]))
    lines.append(_row("total", [_cell(variants[n]["block"]["total_d_per_token"]) for n in names]))
    lines.append(_row("  reduction", ["" if n == "baseline" else _pct(variants[n]["reduction_pct"]["block"])
                                       for n in names]))
    analytic = [variants[n]["analytic"] for n in names]
    if any(a is not None for a in analytic):
        lines.append(_row("analytic minimum", [_cell(a and a["total_d_per_token"]) for a in analytic]))
    peaks = [variants[n].get("recompute_peak") for n in names]
    if any(p is not None for p in peaks):
        lines.append(_row("recompute peak", [_cell(p and p["total_d_per_token"]) for p in peaks]))
    lines.append(_row("whole model, MiB", [_cell(variants[n]["model"]["total"] / 2**20, "{:.1f}") for n in names]))
    lines.append(_row("  reduction", ["" if n == "baseline" else _pct(variants[n]["reduction_pct"]["model"])
                                       for n in names]))
    if any(p is not None for p in peaks):
        lines.append("  (checkpointing keeps the inputs above per block; while one block's backward recomputes it, "
                     "that block also holds what the unchecked variant saves: the recompute peak)")
    lines += _shared(doc) + _differences(doc)
    lines += [f"{VARIANT_LABELS[n]}: not measured: {why}" for n, why in doc["unavailable"].items()]
    return "\n".join(lines)


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def _shared(doc: dict) -> list[str]:
    out = []
    for name, v in doc["variants"].items():
        shares = [f"{kinds} {_size(b)}" for kinds, b in v["shared"].items()]
        if shares:
            out.append(f"  {VARIANT_LABELS[name]}: {', '.join(shares)}")
    return ["", "Storages kept by ops of two kinds, counted once and charged to the first kind (whole model):",
            *out] if out else []


def _differences(doc: dict) -> list[str]:
    """Measured minus analytic minimum per kind and variant; for each such kind, the storages behind it (in the
    first variant where it differs), largest first."""
    variants = {n: v for n, v in doc["variants"].items() if v["analytic"] is not None}
    if not variants:
        return []
    rows, details = [], []
    for kind in doc["kinds"]:
        diffs = {n: v["block"]["d_per_token"][kind] - v["analytic"]["d_per_token"][kind] for n, v in variants.items()}
        if all(abs(x) < _TOLERANCE_D for x in diffs.values()):
            continue
        rows.append(_row(KIND_LABELS[kind], [f"{x:+.2f}" for x in diffs.values()]))
        first = next(n for n, x in diffs.items() if abs(x) >= _TOLERANCE_D)
        kept = sorted((s for s in variants[first]["storages"] if s["kind"] == kind), key=lambda s: -s["bytes"])
        shown = "; ".join(f"{s['d_per_token']:.2f} d {s['dtype']} by {', '.join(s['savers'])}"
                          for s in kept[:_SHOWN_STORAGES])
        more = f"; and {len(kept) - _SHOWN_STORAGES} more" if len(kept) > _SHOWN_STORAGES else ""
        details.append(f"  {KIND_LABELS[kind]} ({VARIANT_LABELS[first]}): {shown or 'nothing'}{more}")
    if not rows:
        return []
    return ["", "Measured minus analytic minimum, d per token:", _row("", [VARIANT_LABELS[n] for n in variants]),
            *rows, "What the block keeps there, largest first:", *details]
