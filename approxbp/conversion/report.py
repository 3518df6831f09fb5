"""What ``approxbp.convert`` did to a model, and what it left alone and why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Change:
    """One converted module.  ``name``: its qualified name in the model given to ``convert`` (the key format of
    ``convert(tables=...)`` for activations); ``readers``: for a folded norm, the linear layers gamma/beta went into."""

    name: str
    kind: str  # "activation", "gated-mlp", "folded-norm", "affine-norm"
    before: str
    after: str
    readers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skip:
    """A norm or activation left as it was.  ``expected``: a rule keeps it on purpose (e.g. a final norm)."""

    name: str
    module: str
    reason: str
    expected: bool = False


@dataclass(frozen=True)
class ConversionReport:
    options: tuple[tuple[str, object], ...]
    changes: tuple[Change, ...]
    skipped: tuple[Skip, ...]
    packed: tuple[Change, ...] = ()  # LoRA layers and dropouts given a packed path (``approxbp.conversion.lora_path``)

    @property
    def activations(self) -> tuple[str, ...]:
        """Names of the converted activations (the keys ``convert(tables=...)`` takes)."""
        return tuple(c.name for c in self.changes if c.kind in ("activation", "gated-mlp"))

    @property
    def unexpected(self) -> tuple[Skip, ...]:
        return tuple(s for s in self.skipped if not s.expected)

    def __str__(self) -> str:
        lines = [f"approxbp.convert ({', '.join(f'{k}={v!r}' for k, v in self.options)}): "
                 f"{len(self.changes)} converted, {len(self.skipped)} left as they were"]
        for c in self.changes:
            into = f" (into {', '.join(c.readers)})" if c.readers else ""
            lines.append(f"  converted {c.name}: {c.before} -> {c.after}{into}")
        lines += [f"  packed    {c.name}: {c.before} -> {c.after}" for c in self.packed]
        lines += [f"  left      {s.name}: {s.module}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


class UnsupportedModelError(ValueError):
    """Nothing in the model could be converted (the message lists what was found and why it was left)."""


def describe_skips(skips: tuple[Skip, ...] | list[Skip], limit: int = 20) -> str:
    lines = [f"  {s.name} ({s.module}): {s.reason}" for s in skips[:limit]]
    if len(skips) > limit:
        lines.append(f"  ... and {len(skips) - limit} more")
    return "\n".join(lines)
