"""Streaming inference: feature frames arrive chunk by chunk, the recurrent state is carried.

After the last chunk the output equals the offline output on the whole sequence, for every
pooling: ``last`` is the carried state, ``mean`` a running sum, ``max`` a running maximum and
``attention`` an online softmax (running maximum score, normaliser and weighted sum).
Bidirectional models need the future and cannot stream.
"""

from __future__ import annotations

import torch

from speechrnn.models.encoder import State
from speechrnn.models.network import SequenceClassifierNet


class StreamingClassifier:
    """Feed ``(batch, chunk_time, features)`` chunks to :meth:`push`; read :meth:`output` any time."""

    def __init__(self, net: SequenceClassifierNet) -> None:
        if net.encoder.bidirectional:
            raise ValueError(
                "bidirectional models cannot stream: their backward direction needs the end of the input; "
                "train with --model.bidirectional false to stream"
            )
        self.net = net.eval()
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far (start a new utterance)."""
        self.states: list[State] | None = None
        self.frames = 0
        self.summary: torch.Tensor | None = None
        self.score_max: torch.Tensor | None = None
        self.score_sum: torch.Tensor | None = None

    @torch.inference_mode()
    def push(self, chunk: torch.Tensor) -> torch.Tensor:
        """Consume one chunk of frames (every sequence in the batch advances by the same number of
        frames); returns the outputs for everything seen so far."""
        if chunk.dim() == 2:
            chunk = chunk.unsqueeze(0)
        if chunk.shape[1] == 0:
            return self.output()
        lengths = torch.full((chunk.shape[0],), chunk.shape[1], dtype=torch.int64)
        outputs, self.states = self.net.encoder(
            self.net.input_norm(chunk), lengths, states=self.states, return_states=True
        )
        self._update_summary(outputs)
        self.frames += chunk.shape[1]
        return self.output()

    def _update_summary(self, outputs: torch.Tensor) -> None:
        mode = self.net.pooling.mode
        if mode == "last":
            self.summary = outputs[:, -1]
        elif mode == "mean":
            total = outputs.sum(1)
            self.summary = total if self.summary is None else self.summary + total
        elif mode == "max":
            peak = outputs.amax(1)
            self.summary = peak if self.summary is None else torch.maximum(self.summary, peak)
        else:
            scores = self.net.pooling.score(outputs).float()  # (batch, time, 1)
            chunk_max = scores.amax(1)
            new_max = chunk_max if self.score_max is None else torch.maximum(self.score_max, chunk_max)
            weights = torch.exp(scores - new_max[:, None])
            weighted = (weights * outputs).sum(1)
            normaliser = weights.sum(1)
            if self.score_max is not None:
                rescale = torch.exp(self.score_max - new_max)
                weighted = weighted + rescale * self.summary
                normaliser = normaliser + rescale * self.score_sum
            self.summary, self.score_sum, self.score_max = weighted, normaliser, new_max

    @torch.inference_mode()
    def output(self) -> torch.Tensor:
        """Outputs (logits) for the frames seen so far, as the offline model would give them."""
        if self.summary is None:
            raise RuntimeError("no frames pushed yet")
        mode = self.net.pooling.mode
        summary = self.summary
        if mode == "mean":
            summary = summary / self.frames
        elif mode == "attention":
            summary = summary / self.score_sum
        return self.net.head(self.net.dropout(summary))
