"""The real data sets of the convergence study, all shipped offline, with fixed splits and seeded batch orders.

- digits: scikit-learn's ``load_digits`` (1,797 grey 8x8 images, 10 classes), pixels / 16 standardised with the
  training mean and std; split by a permutation drawn with seed 0: 80% train, 20% validation.  ``digits(classes=...)``
  keeps only the listed labels (the ViT's LoRA pretraining uses 0-4).
- pydoc bytes: CPython's ``pydoc_data.topics`` (the help() text), topics in sorted key order joined by a blank line,
  UTF-8 bytes (vocabulary 256); the first 90% of the bytes train, the last 10% validate.  Training batches are windows
  of ``length + 1`` bytes at seeded random offsets; validation uses fixed non-overlapping windows.
- stdlib docstrings: for each module of ``DOCSTRING_MODULES`` (sorted public names, ``inspect.getmembers``), the
  ``inspect.getdoc`` text of its own public functions and classes and of those classes' public methods, with at
  least 8 words, labelled by the module.  A text found under two labels is dropped; each module keeps at most
  ``PER_CLASS`` texts (a seed-0 random choice among its texts in sorted order); then each class is split 70/30 by a
  seed-1 permutation (stratified).  Docstrings depend on the Python version, so the counts are recorded in the JSON.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch

DOCSTRING_MODULES = ("decimal", "socket", "logging", "mailbox", "tarfile", "threading", "math", "datetime")
PER_CLASS = 60
MIN_WORDS = 8


@dataclass(frozen=True)
class TensorSplit:
    """Inputs and labels of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled batches: a new permutation from ``generator`` each epoch, the last partial batch dropped."""
        if size > len(self):
            raise ValueError(f"batch size {size} exceeds the {len(self)} examples of the split")
        while True:
            order = torch.randperm(len(self), generator=generator)
            for start in range(0, len(self) - size + 1, size):
                index = order[start:start + size]
                yield self.x[index], self.y[index]


def digits(classes: tuple[int, ...] = tuple(range(10))) -> tuple[TensorSplit, TensorSplit]:
    """(train, val) of scikit-learn's digits as (N, 1, 8, 8) float32 standardised pixels and int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    train, val = order[:cut], order[cut:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    keep = torch.isin(y, torch.tensor(classes))
    train, val = train[keep[train]], val[keep[val]]
    return TensorSplit(x[train], y[train]), TensorSplit(x[val], y[val])


def pydoc_bytes() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) byte streams (uint8) of CPython's help() topics."""
    from pydoc_data.topics import topics

    data = torch.frombuffer(bytearray("\n\n".join(topics[k] for k in sorted(topics)).encode()), dtype=torch.uint8)
    cut = int(0.9 * len(data))
    return data[:cut].clone(), data[cut:].clone()


def pydoc_paragraphs(count: int, skip: int = 0) -> list[str]:
    """``count`` long English paragraphs (>= 90 words) of CPython's help() topics, topics in sorted key order, after
    skipping the first ``skip``."""
    from pydoc_data.topics import topics

    found = [p.strip() for key in sorted(topics) for p in topics[key].split("\n\n")
             if len(p.split()) >= 90 and p.strip()[:1].isalpha()]
    if len(found) < skip + count:
        raise ValueError(f"only {len(found)} long paragraphs available, asked for {skip + count}")
    return found[skip: skip + count]


def byte_batches(stream: torch.Tensor, length: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless (size, length + 1) int64 windows of ``stream`` at random offsets drawn from ``generator``."""
    if len(stream) <= length + 1:
        raise ValueError(f"stream of {len(stream)} bytes is too short for windows of {length + 1}")
    while True:
        starts = torch.randint(0, len(stream) - length - 1, (size,), generator=generator)
        yield torch.stack([stream[s:s + length + 1] for s in starts.tolist()]).long()


def byte_windows(stream: torch.Tensor, length: int, count: int) -> torch.Tensor:
    """The first ``count`` non-overlapping (length + 1)-byte windows of ``stream`` (the fixed validation set)."""
    if count * (length + 1) > len(stream):
        raise ValueError(f"{count} windows of {length + 1} bytes need more than the stream's {len(stream)} bytes")
    return stream[:count * (length + 1)].view(count, length + 1).long()


def _docstrings(module_name: str) -> set[str]:
    module = importlib.import_module(module_name)
    texts: set[str] = set()

    def visit(owner, top: bool) -> None:
        for name, member in inspect.getmembers(owner):
            routine = inspect.isroutine(member)
            if name.startswith("_") or not (routine or inspect.isclass(member)):
                continue
            if top and getattr(member, "__module__", module_name) != module_name:
                continue
            text = inspect.getdoc(member)
            if text and len(text.split()) >= MIN_WORDS:
                texts.add(text)
            if top and inspect.isclass(member):
                visit(member, False)

    visit(module, True)
    return texts


@dataclass(frozen=True)
class TextSplit:
    texts: tuple[str, ...]
    labels: tuple[int, ...]


def docstring_classification(modules: tuple[str, ...] = DOCSTRING_MODULES, per_class: int = PER_CLASS
                             ) -> tuple[TextSplit, TextSplit]:
    """(train, val) of standard-library docstrings labelled by the index of their module in ``modules``."""
    if len(set(modules)) < 2:
        raise ValueError(f"a classification needs at least 2 distinct modules, got {modules}")
    found = {m: _docstrings(m) for m in modules}
    counts: dict[str, int] = {}
    for texts in found.values():
        for text in texts:
            counts[text] = counts.get(text, 0) + 1
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    for label, module in enumerate(modules):
        texts = sorted(t for t in found[module] if counts[t] == 1)
        if len(texts) < 4:
            raise ValueError(f"module {module!r} has only {len(texts)} usable docstrings")
        chosen = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))[:per_class]
        texts = [texts[i] for i in sorted(chosen.tolist())]
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(1)).tolist()
        cut = round(0.7 * len(texts))
        train += [(texts[i], label) for i in order[:cut]]
        val += [(texts[i], label) for i in order[cut:]]
    return (TextSplit(*map(tuple, zip(*train, strict=True))), TextSplit(*map(tuple, zip(*val, strict=True))))
