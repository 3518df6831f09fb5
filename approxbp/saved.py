"""Count the bytes autograd saves for backward: saved-tensor hooks, unique storages, parameters excluded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


def storage_key(t: torch.Tensor) -> int:
    """Identity of the storage behind ``t`` (its StorageImpl address): equal for views of one buffer, distinct for
    live buffers, and meaningful on the ``meta`` device too, where every data pointer is 0."""
    return t.untyped_storage()._cdata


@dataclass
class SavedTensors:
    """What autograd saved inside a ``record_saved()`` block, deduplicated by storage."""

    storages: dict[int, int] = field(default_factory=dict)  # storage key -> bytes
    dtypes: dict[int, torch.dtype] = field(default_factory=dict)
    excluded: set[int] = field(default_factory=set)
    _alive: list[torch.Tensor] = field(default_factory=list, repr=False)  # keeps keys unique while recording

    @property
    def bytes(self) -> int:
        return sum(n for key, n in self.storages.items() if key not in self.excluded)

    @property
    def count(self) -> int:
        return len([key for key in self.storages if key not in self.excluded])


@contextmanager
def record_saved(*exclude: torch.Tensor | torch.nn.Module) -> Iterator[SavedTensors]:
    """Record every tensor autograd saves in the block; storages of ``exclude`` (tensors, or all parameters and
    buffers of modules) are not counted.  Sharing is by storage: two views of one buffer count once."""
    record = SavedTensors()
    for item in exclude:
        tensors = list(item.parameters()) + list(item.buffers()) if isinstance(item, torch.nn.Module) else [item]
        record.excluded.update(storage_key(t) for t in tensors)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.nbytes() or t.numel():
            key = storage_key(t)
            if key not in record.storages:
                record._alive.append(t)
            record.storages[key] = storage.nbytes()
            record.dtypes[key] = t.dtype
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield record
    finally:
        record._alive.clear()
