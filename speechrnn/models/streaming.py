"""Streaming inference: feature frames arrive chunk by chunk, the recurrent state is carried.

After the last chunk the output equals the offline output on the whole sequence, for every
pooling (through the pooling's incremental form, :meth:`SequencePooling.update`).
Bidirectional models need the future and cannot stream.
"""

from __future__ import annotations

import torch

from speechrnn.models.encoder import State
from speechrnn.models.network import SequenceClassifierNet
from speechrnn.models.pooling import PoolingState


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
        self.pooled: PoolingState | None = None

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
        self.pooled = self.net.pooling.update(self.pooled, outputs)
        return self.output()

    @torch.inference_mode()
    def output(self) -> torch.Tensor:
        """Outputs (logits) for the frames seen so far, as the offline model would give them."""
        if self.pooled is None:
            raise RuntimeError("no frames pushed yet")
        summary = self.net.pooling.read(self.pooled)
        return self.net.head(self.net.dropout(summary))
