"""Figure 9: the benchmarks of ``python -m benchmarks.run`` (issue 14): kernels' achieved bandwidth against size
(approxbp vs PyTorch vs Liger-Kernel) and a training step's memory and throughput per variant, relative to the
baseline, beside the memory profiler's prediction.

Full run: the newest CUDA results document under benchmarks/results/ (``"device": "cuda"``).  Until a GPU run is
committed there is none, and the figure draws the committed CPU quick run instead, titled as such: CPU timings of
the pure-PyTorch reference ops, which say nothing about GPU speed.  Quick: a CPU run of both suites, narrowed to
one size and dtype and one training setting, recomputed here.
"""

from __future__ import annotations

import json

from paper_figures.base import ROOT, Drawing, Input, MissingInput

NAME = "gpu_benchmarks"
TITLE = "GPU benchmarks (kernels' bandwidth, training memory and throughput); CPU quick run until a GPU run exists"
CPU_QUICK = Input("benchmarks/results/cpu_quick.json",
                  "python -m benchmarks.run --suite all --device cpu --quick --out benchmarks/results/cpu_quick.json")
INPUTS = (CPU_QUICK,)
RESULTS = ROOT / "benchmarks" / "results"
NO_GPU = "No CUDA results in benchmarks/results/ yet: showing the CPU quick run, NOT GPU numbers"


def cuda_documents(results=None) -> list[tuple[str, dict]]:
    """(path, relative to the root where it lies under it; document) of every CUDA results file in ``results``
    (default benchmarks/results/), newest first."""
    found = []
    for path in sorted((results or RESULTS).glob("*.json")):
        name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise MissingInput(f"{name} is not valid JSON ({e}); rerun python -m benchmarks.run") from None
        if isinstance(doc, dict) and doc.get("device") == "cuda":
            found.append((name, doc))
    return sorted(found, key=lambda item: item[1].get("created", ""), reverse=True)


def quick_document() -> dict:
    from benchmarks.kernels_suite import QUICK_SIZES, Scale
    from benchmarks.run import document

    return document("all", "cpu", True, f"python -m paper_figures --only {NAME} --quick", log=lambda line: None,
                    kernels_scale=Scale(QUICK_SIZES[:1], ("fp32",), 1, 3), training_names=("roberta-base-lora-r64",))


def summary(doc: dict) -> dict:
    """The plotted numbers: per op and implementation at the largest size, and per setting and variant."""
    out = {}
    if doc.get("kernels"):
        kernels = doc["kernels"]
        largest = max(kernels["sizes_bytes"])
        out["kernels_at_largest_size"] = [
            {"op": r["op"], "impl": r["impl"], "dtype": r["dtype"], "size_bytes": r["size_bytes"],
             **{f"{d}_{k}": r[d][k] for d in ("forward", "backward")
                for k in ("fraction_of_copy", "speedup_vs_torch", "bandwidth_bytes_per_s")}}
            for r in kernels["results"] if r["size_bytes"] == largest]
        out["copy_bandwidth_bytes_per_s"] = kernels["copy_bandwidth_bytes_per_s"]
    if doc.get("training"):
        out["training"] = [{"setting": s["name"], "variant": v, "failed": r.get("failed"),
                            "memory": r.get("memory"), "memory_vs_baseline": r.get("memory_vs_baseline"),
                            "throughput_vs_baseline": r.get("throughput_vs_baseline"),
                            "samples_per_s": r.get("samples_per_s"), "prediction": r["prediction"]}
                           for s in doc["training"]["settings"] for v, r in s["variants"].items()]
    return out


def make(quick: bool) -> Drawing:
    from benchmarks.plot import draw

    if quick:
        source, doc, title = "computed (quick CPU run)", quick_document(), None
    else:
        found = cuda_documents()
        if found:
            source, doc = found[0]
            title = None
        else:
            source, doc = CPU_QUICK.path, CPU_QUICK.read_json()
            title = f"{NO_GPU}\n{doc['label']}"
    data = {"title": title or doc["label"], "how": __doc__.split("\n\n", 1)[1].replace("\n", " "),
            "source": source, "device": doc["device"],
            "label": doc["label"], "gpu_results": doc["device"] == "cuda", "environment": doc["environment"],
            **summary(doc)}
    return Drawing(draw(doc, title), data)
