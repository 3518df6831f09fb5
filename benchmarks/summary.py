"""A results document as Markdown tables (what ``python -m benchmarks.run`` prints): kernels at the largest size,
training per setting and variant beside the profiler's prediction."""

from __future__ import annotations

MiB = 2**20


def _ms(timing: dict) -> str:
    return f"{timing['median_s'] * 1e3:.3g} [{timing['q1_s'] * 1e3:.3g}, {timing['q3_s'] * 1e3:.3g}]"


def kernels_table(kernels: dict) -> list[str]:
    largest = max(kernels["sizes_bytes"])
    copy = kernels["copy_bandwidth_bytes_per_s"] / 1e9
    lines = [f"kernels at {largest / MiB:g} MiB per input; copy bandwidth {copy:.1f} GB/s; time ms: median [q1, q3]; "
             "% copy: achieved bandwidth / copy bandwidth; x torch: speed-up",
             "", "| op | impl | dtype | forward ms | % copy | x torch | backward ms | % copy | x torch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in kernels["results"]:
        if r["size_bytes"] != largest:
            continue
        f, b = r["forward"], r["backward"]
        lines.append(f"| {r['op']} | {r['impl']} | {r['dtype']} | {_ms(f['timing'])} | "
                     f"{100 * f['fraction_of_copy']:.0f} | {f['speedup_vs_torch']:.2f} | {_ms(b['timing'])} | "
                     f"{100 * b['fraction_of_copy']:.0f} | {b['speedup_vs_torch']:.2f} |")
    lines += [f"skipped: {s['op']} {s['impl']}: {s['reason']}" for s in kernels["skipped"]]
    return lines


def _prediction(p: dict, base: dict) -> str:
    if "activation_bytes" not in p:
        return "n/a"
    ratio = f" ({p['activation_bytes'] / base['activation_bytes']:.3f})" if base.get("activation_bytes") else ""
    return f"{p['activation_bytes'] / MiB:.3g}{ratio}"


def training_table(training: dict) -> list[str]:
    lines = ["training: memory MiB (ratio to the baseline), samples/s (ratio), the profiler's activation MiB (ratio)",
             "", "| setting | variant | memory | samples/s | predicted activations |", "|---|---|---|---|---|"]
    for s in training["settings"]:
        base = s["variants"]["baseline"]["prediction"]
        for name, v in s["variants"].items():
            if "failed" in v:
                lines.append(f"| {s['name']} | {name} | failed: {v['failed']} | | |")
                continue
            memory = v["memory"].get("peak_bytes", v["memory"].get("autograd_saved_bytes"))
            lines.append(f"| {s['name']} | {name} | {memory / MiB:.4g} ({v['memory_vs_baseline']:.3f}) | "
                         f"{v['samples_per_s']:.1f} ({v['throughput_vs_baseline']:.3f}) | "
                         f"{_prediction(v['prediction'], base)} |")
    metric = next((v["memory"]["metric"] for s in training["settings"] for v in s["variants"].values()
                   if "memory" in v), "")
    return [*lines, f"memory: {metric}"]


def render(doc: dict) -> str:
    lines = [doc["label"], ""]
    if doc.get("kernels"):
        lines += [*kernels_table(doc["kernels"]), ""]
    if doc.get("training"):
        lines += training_table(doc["training"])
    return "\n".join(lines)
