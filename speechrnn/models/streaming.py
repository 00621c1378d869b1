"""Streaming inference: feature frames arrive chunk by chunk, the recurrent state is carried.

After the last chunk the output equals the offline output on the whole sequence, for every
pooling (through the pooling's incremental form, :meth:`SequencePooling.update`). A per-step
network (voice activity, a time-series or character model) gives the outputs of each chunk's
frames instead, equal to the offline outputs of those frames: the hidden state carried between
calls is the whole history. Bidirectional models need the future and cannot stream.
"""

from __future__ import annotations

import torch

from speechrnn.models.encoder import State
from speechrnn.models.network import SequenceClassifierNet
from speechrnn.models.pooling import PoolingState


class StreamingClassifier:
    """Feed ``(batch, chunk_time, features)`` chunks to :meth:`push`; read :meth:`output` any time
    (whole-sequence networks)."""

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
        frames); returns the outputs for everything seen so far, or, for a per-step network, the
        outputs ``(batch, chunk_time, num_outputs)`` of this chunk's frames."""
        if chunk.dim() == 2:
            chunk = chunk.unsqueeze(0)
        if chunk.shape[1] == 0:
            return (
                chunk.new_zeros(chunk.shape[0], 0, self.net.head.out_features) if self.net.per_step else self.output()
            )
        lengths = torch.full((chunk.shape[0],), chunk.shape[1], dtype=torch.int64)
        outputs, self.states = self.net.encoder(
            self.net.input_norm(chunk), lengths, states=self.states, return_states=True
        )
        if self.net.per_step:
            return self.net.head(self.net.dropout(outputs))
        self.pooled = self.net.pooling.update(self.pooled, outputs)
        return self.output()

    @torch.inference_mode()
    def output(self) -> torch.Tensor:
        """Outputs (logits) for the frames seen so far, as the offline model would give them."""
        if self.net.per_step:
            raise RuntimeError("a per-step network has no whole-sequence output; push returns each chunk's outputs")
        if self.pooled is None:
            raise RuntimeError("no frames pushed yet")
        summary = self.net.pooling.read(self.pooled)
        return self.net.head(self.net.dropout(summary))
