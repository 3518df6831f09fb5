"""What a figure module provides, and the inputs it may read.

A figure module defines ``NAME`` (the file stem and the ``--only`` name), ``TITLE`` (one line), ``INPUTS`` (the
committed files a full run reads, each with the command that writes it; a quick run recomputes them at a small
scale and reads nothing) and ``make(quick: bool) -> Drawing``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class MissingInput(Exception):
    """An input file of a full run does not exist; the message names the command that writes it."""


@dataclass(frozen=True)
class Input:
    """A committed file a full run reads (``path`` relative to the repository root) and the command that writes it."""

    path: str
    command: str

    @property
    def file(self) -> Path:
        return ROOT / self.path

    def missing_message(self) -> str:
        return f"missing {self.path}: produce it with `{self.command}`"

    def read_json(self) -> dict:
        if not self.file.is_file():
            raise MissingInput(self.missing_message())
        try:
            return json.loads(self.file.read_text())
        except json.JSONDecodeError as e:
            raise MissingInput(f"{self.path} is not valid JSON ({e}); rewrite it with `{self.command}`") from None


@dataclass
class Drawing:
    """A finished matplotlib figure and the numbers it shows, with how they were made (JSON-ready)."""

    figure: object
    data: dict
