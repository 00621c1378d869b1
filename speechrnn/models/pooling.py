"""Masked pooling over time: padding never counts towards the sequence summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from speechrnn.padding import lengths_mask

Pooling = Literal["mean", "last", "max", "attention"]
POOLINGS: tuple[str, ...] = ("mean", "last", "max", "attention")


class SequencePooling(nn.Module):
    """Summarise encoder outputs ``(batch, time, D * H)`` into ``(batch, D * H)``.

    - ``mean``: average of the valid frames.
    - ``max``: per-feature maximum over the valid frames.
    - ``last``: the forward direction's state at each sequence's true last frame, and (when
      bidirectional) the backward direction's state at the first frame, each having read the
      whole sequence: the classic many-to-one readout ``y = W_hy h_T + b_y``.
    - ``attention``: additive attention, ``a_t = softmax_t(v^T tanh(W h_t + b))`` over valid
      frames, output ``sum_t a_t h_t``.
    """

    def __init__(self, mode: Pooling, size: int, num_directions: int, attention_size: int = 64) -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")
        self.mode = mode
        self.num_directions = num_directions
        if mode == "attention":
            self.score = nn.Sequential(
                nn.Linear(size, attention_size), nn.Tanh(), nn.Linear(attention_size, 1, bias=False)
            )

    def forward(self, outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = lengths_mask(lengths, outputs.shape[1], outputs.device).unsqueeze(-1)
        if self.mode == "mean":
            return (outputs * mask).sum(1) / lengths.to(outputs.device, outputs.dtype).clamp_min(1)[:, None]
        if self.mode == "max":
            return outputs.masked_fill(~mask, torch.finfo(outputs.dtype).min).amax(1)
        if self.mode == "last":
            rows = torch.arange(outputs.shape[0], device=outputs.device)
            last = outputs[rows, (lengths.to(outputs.device) - 1).clamp_min(0)]
            if self.num_directions == 1:
                return last
            hidden = outputs.shape[-1] // 2
            return torch.cat([last[:, :hidden], outputs[:, 0, hidden:]], dim=-1)
        scores = self.score(outputs).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores.float(), dim=1).to(outputs.dtype)
        return (weights * outputs).sum(1)

    def update(self, state: PoolingState | None, outputs: torch.Tensor) -> PoolingState:
        """The incremental form, for streaming: fold a chunk of unpadded encoder outputs
        ``(batch, time, D * H)`` into ``state`` (None before the first chunk). After the last chunk
        :meth:`read` gives what :meth:`forward` gives on the whole sequence: ``last`` keeps the
        latest frame, ``mean`` a running sum, ``max`` a running maximum and ``attention`` an online
        softmax (running maximum score, normaliser and weighted sum)."""
        frames = outputs.shape[1] + (state.frames if state else 0)
        if self.mode == "last":
            return PoolingState(outputs[:, -1], frames)
        if self.mode == "mean":
            total = outputs.sum(1)
            return PoolingState(total if state is None else state.summary + total, frames)
        if self.mode == "max":
            peak = outputs.amax(1)
            return PoolingState(peak if state is None else torch.maximum(state.summary, peak), frames)
        scores = self.score(outputs).float()  # (batch, time, 1)
        chunk_max = scores.amax(1)
        new_max = chunk_max if state is None else torch.maximum(state.score_max, chunk_max)
        weights = torch.exp(scores - new_max[:, None])
        weighted, normaliser = (weights * outputs).sum(1), weights.sum(1)
        if state is not None:
            rescale = torch.exp(state.score_max - new_max)
            weighted, normaliser = weighted + rescale * state.summary, normaliser + rescale * state.score_sum
        return PoolingState(weighted, frames, new_max, normaliser)

    def read(self, state: PoolingState) -> torch.Tensor:
        """The summary ``(batch, D * H)`` of everything folded into ``state``."""
        if self.mode == "mean":
            return state.summary / state.frames
        if self.mode == "attention":
            return state.summary / state.score_sum
        return state.summary


@dataclass
class PoolingState:
    """What :meth:`SequencePooling.update` carries between chunks."""

    summary: torch.Tensor
    frames: int
    score_max: torch.Tensor | None = None
    score_sum: torch.Tensor | None = None
