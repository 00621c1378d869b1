"""``Record``: one example of a corpus, as every DataModule lists them before any audio is read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    """One example: where its data comes from, its label and, when known, its speaker and split."""

    source: str
    label: str
    speaker: str | None = None
    split: str | None = None
    segments: tuple[tuple[float, float], ...] | None = None
    """Where the labelled sound (speech) is, ``(start, end)`` seconds each; None when unknown."""
