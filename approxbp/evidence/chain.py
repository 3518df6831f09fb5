"""Every parameter's Approx-BP gradient error through L blocks, next to the chain bound of proof (v).

A network is a chain of stages u_{k+1} = f_k(u_k) (the embeddings, then the blocks) followed by an exact head.  For
a parameter p of stage k, at the exact run's forward, K_p = (d u_{k+1} / d p)^T maps the gradient at the stage's
output to p's gradient: exact dp = K_p g_k, Approx-BP dp~ = K~_p g~_k, where K~ is the stage's backward with the
table's step s in place of h' (the forward is the same).  With e_k = g~_k - g_k (``proofs/grad_bound.py``, (iv)-(v)):

    dp~ - dp = K~_p e_k + (K~_p - K_p) g_k,   so   ||dp~ - dp||_F <= ||K~_p||_2 E_k + ||(K~_p - K_p) g_k||_F,

and the stage's input (K = B^T, the stage's backward map) gives the recursion of (v) for the bounds E_k >= ||e_k||:
E_last = 0 (the head is exact), E_{k-1} = ||B~_k||_2 E_k + ||(B~_k - B_k)^T g_k||_F.  Every term comes from the
exact run (g_k) and from one stage at a time (K, K~ at the exact forward): no Approx-BP run of the whole network.
So every weight (attention, MLP, norms, embeddings) gets a bound, not only the activation's fc1.  Parameters whose
exact gradient is zero but for rounding (attention key biases: softmax ignores them) have no relative error; they are
left out.

K and K~ are built column by column (one backward per output coordinate of the stage) and their spectral norms are
exact (``approxbp.evidence.bounds.spectral_norm``), so the models are small: float64, a few hundred to a thousand
coordinates per stage.  At the size of all-MiniLM-L6-v2 (128 x 384 per sequence) only power-iteration estimates
would be affordable, and an estimate of ||K~||_2 from below cannot make a bound: that model is left out.

    python -m approxbp.evidence chain [--quick] [--out paper_figures/data/grad_chain.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from approxbp.artifacts import write_atomic
from approxbp.evidence.bounds import frobenius, spectral_norm
from approxbp.evidence.data import digits, pydoc_bytes
from approxbp.evidence.grad_error import converted, rounded
from approxbp.evidence.tables import TableSpec, specs

SLACK = 1e-9  # relative float64 slack on measured <= bound
ZERO = 1e-8  # exact gradients below ZERO x the largest one are zero but for rounding (key biases: softmax ignores them)
DEFAULT_OUT = Path("paper_figures/data/grad_chain.json")
QUICK_SPECS = (TableSpec("primitive", 2),)
FULL_SPECS = (*specs(bits=(2,)), TableSpec("relu", 1))  # the layer-level study (grad_error) covers bits 1..4


@dataclass
class ChainCase:
    name: str
    description: str
    model: nn.Module
    batch: dict
    calibration: dict
    stages: list[str]  # the embeddings, then the blocks, in order: each one's output is the next one's input
    loss: Callable[[nn.Module, dict], torch.Tensor]


def vit_case(quick: bool) -> ChainCase:
    from transformers import ViTConfig, ViTForImageClassification

    hidden = 16 if quick else 32
    count = 1
    train, _ = digits()
    pixels = train.x.double().repeat_interleave(2, 2).repeat_interleave(2, 3)  # 16 x 16: 16 patches + CLS
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=hidden, num_hidden_layers=4,
                       num_attention_heads=2, intermediate_size=4 * hidden, num_labels=10,
                       initializer_range=hidden ** -0.5)
    model = ViTForImageClassification(config).double().eval()
    labels = train.y[:count]

    def loss(model, batch):
        return nn.functional.cross_entropy(model(**batch).logits, labels)

    return ChainCase("vit-digits", f"HF ViT, random init (seed 0), hidden {hidden}, 4 layers, 2 heads, GELU, "
                     f"float64; {count} digits upsampled to 16 x 16, patch 4 (17 tokens)", model,
                     {"pixel_values": pixels[:count]}, {"pixel_values": pixels[count:2 * count]},
                     ["vit.embeddings"] + [f"vit.layers.{i}" for i in range(4)], loss)


def llama_case(quick: bool) -> ChainCase:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, count, length = (16, 1, 8) if quick else (32, 1, 16)
    windows = pydoc_bytes()[0][: 2 * count * length].long().reshape(2 * count, length)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=hidden, num_hidden_layers=4, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=3 * hidden, max_position_embeddings=length,
                         initializer_range=hidden ** -0.5)
    model = LlamaForCausalLM(config).double().eval()

    def loss(model, batch):
        return model(**batch, labels=batch["input_ids"], use_cache=False).loss  # stages are re-run: no KV cache

    return ChainCase("llama-bytes", f"HF LLaMA, random init (seed 0), hidden {hidden}, 4 layers, SwiGLU MLP "
                     f"{3 * hidden}, float64; {count} windows of {length} bytes of pydoc_data.topics", model,
                     {"input_ids": windows[:count]}, {"input_ids": windows[count:]},
                     ["model.embed_tokens"] + [f"model.layers.{i}" for i in range(4)], loss)


CASES = (vit_case, llama_case)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


class StageRecorder:
    """Hooks on every stage: its call (args, kwargs) and, in the backward, the gradient at its output."""

    def __init__(self, model: nn.Module, stages: list[str]):
        self.calls: dict[str, tuple] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.handles = []
        for name in stages:
            module = model.get_submodule(name)
            self.handles.append(module.register_forward_pre_hook(self._call(name), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._output(name)))

    def _call(self, name):
        def hook(_module, args, kwargs):
            self.calls[name] = (args, kwargs)
        return hook

    def _output(self, name):
        def hook(_module, _inputs, output):
            _first(output).register_hook(lambda grad: self.grads.__setitem__(name, grad.detach()))
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def full_backward(case: ChainCase) -> tuple[dict[str, torch.Tensor], StageRecorder]:
    """Every parameter's gradient of the model as it is now, and the stages' calls and output gradients."""
    recorder = StageRecorder(case.model, case.stages)
    try:
        params = dict(case.model.named_parameters())
        grads = torch.autograd.grad(case.loss(case.model, case.batch), list(params.values()), allow_unused=True)
    finally:
        recorder.remove()
    return {n: g for n, g in zip(params, grads, strict=True) if g is not None}, recorder


@dataclass
class StageMaps:
    """K_p for each parameter of one stage and B^T for its input (None for the first stage), at one forward: as
    matrices with one column per output coordinate, or as their products with one output gradient (columns: 1)."""

    params: dict[str, torch.Tensor]
    input: torch.Tensor | None


def stage_maps(module: nn.Module, call: tuple, prefix: str, with_input: bool,
               gradient: torch.Tensor | None = None) -> StageMaps:
    """The backward maps of ``module`` at the recorded ``call`` (its first positional argument is the stage input).
    With ``gradient``: their products with it (one backward), else the full matrices (one backward per coordinate)."""
    args, kwargs = call
    if not args:
        raise ValueError(f"{prefix} was called without a positional input: cannot tell which argument is the stage's")
    u = args[0].detach().requires_grad_(with_input)
    args = (u, *args[1:])
    names, params = zip(*[(f"{prefix}.{n}", p) for n, p in module.named_parameters()], strict=True)
    inputs = [*params, u] if with_input else list(params)
    with torch.enable_grad():
        out = _first(module(*args, **kwargs))
    columns = gradient.reshape(1, -1) if gradient is not None else torch.eye(out.numel(), dtype=out.dtype)
    grads = torch.autograd.grad(out, inputs, columns.reshape(-1, *out.shape), allow_unused=True,
                                is_grads_batched=True)  # vmap over the backward: one column per output coordinate
    count = len(columns)
    matrices = [torch.zeros(x.numel(), count, dtype=out.dtype) if grad is None else grad.reshape(count, -1).T
                for grad, x in zip(grads, inputs, strict=True)]
    return StageMaps(dict(zip(names, matrices, strict=False)), matrices[-1] if with_input else None)


def chain_rows(case: ChainCase, spec: TableSpec, exact: dict, recorder: StageRecorder) -> tuple[list, list]:
    """Per parameter: measured relative error and the chain bound; per stage: measured ||e_k|| and E_k."""
    model = case.model
    with converted(model, **spec.convert_options([case.calibration])):
        approx, approx_recorder = full_backward(case)
        maps = []
        for index, name in enumerate(case.stages):
            module, call, g = model.get_submodule(name), recorder.calls[name], recorder.grads[name]
            maps.append((stage_maps(module, call, name, index > 0), stage_maps(module, call, name, index > 0, g)))
    exact_on_g = [stage_maps(model.get_submodule(n), recorder.calls[n], n, i > 0, recorder.grads[n])
                  for i, n in enumerate(case.stages)]
    zero = ZERO * max(frobenius(g) for g in exact.values())
    rows, stages, bound_e = [], [], 0.0  # E at the last stage's output: the head is exact
    for index in reversed(range(len(case.stages))):
        name = case.stages[index]
        (full, on_g), exact_g = maps[index], exact_on_g[index]
        measured_e = frobenius(approx_recorder.grads[name] - recorder.grads[name])
        stages.append({"model": case.name, "table": spec.name, "stage": index, "name": name,
                       "measured_e": measured_e, "bound_e": bound_e})
        for param, matrix in full.params.items():
            reference = frobenius(exact[param])
            if reference <= zero:
                continue
            local = frobenius(on_g.params[param] - exact_g.params[param])
            bound = spectral_norm(matrix) * bound_e + local
            measured = frobenius(approx[param] - exact[param])
            rows.append({"model": case.name, "table": spec.name, "kind": spec.kind, "bits": spec.bits,
                         "stage": index, "param": param, "measured": measured / reference,
                         "bound": bound / reference, "local_only": local / reference})
        if full.input is not None:
            bound_e = spectral_norm(full.input) * bound_e + frobenius(on_g.input - exact_g.input)
    return rows, stages[::-1]


def run(quick: bool = False) -> dict:
    table_specs = QUICK_SPECS if quick else FULL_SPECS
    doc = {"command": "python -m approxbp.evidence chain" + (" --quick" if quick else ""), "slack": SLACK,
           "models": {}, "rows": [], "stages": []}
    bar = tqdm(total=len(CASES) * len(table_specs), desc="chain bound", unit="table", disable=quick)
    for build in CASES:
        case = build(quick)
        doc["models"][case.name] = case.description
        exact, recorder = full_backward(case)
        for spec in table_specs:
            bar.set_postfix_str(f"{case.name} {spec.name}")
            rows, stages = chain_rows(case, spec, exact, recorder)
            bar.update()
            doc["rows"] += rows
            doc["stages"] += stages
    ratios = [r["measured"] / r["bound"] for r in doc["rows"] if r["bound"] > 0]
    doc["max_ratio"], doc["median_ratio"] = max(ratios), statistics.median(ratios)
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI scale: the 2-bit primitive table, tiny inputs "
                        "(default: every 2-bit table and ReLU)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        parser.exit(2, f"error: --out folder {args.out.parent} does not exist\n")
    write_atomic(args.out, json.dumps(rounded(run(args.quick)), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
