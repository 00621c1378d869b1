"""Padded batches: which frames of a ``(batch, time, ...)`` tensor are real, for every layer that masks."""

from __future__ import annotations

import torch

PADDED_CLASS = -100
"""Per-step class target of a padded frame: ``F.cross_entropy``'s ``ignore_index``, so padding never
counts in the loss."""


def lengths_mask(lengths: torch.Tensor, max_len: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean ``(batch, max_len)`` mask, True on valid frames (``lengths`` on any device; the
    mask on ``device``, or on the lengths' device when None)."""
    lengths = lengths.to(device) if device is not None else lengths
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
