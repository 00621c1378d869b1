"""The plain ``nn.Module`` sequence classifier: input norm -> recurrent encoder -> pooling -> head."""

from __future__ import annotations

import torch
from torch import nn

from speechrnn.models.encoder import Cell, Fused, RecurrentEncoder
from speechrnn.models.pooling import Pooling, SequencePooling


class SequenceClassifierNet(nn.Module):
    """Many-to-one recurrent network: ``(features (B, T, F), lengths (B,)) -> outputs (B, num_outputs)``
    (or many-to-many, ``(B, T, num_outputs)``, with ``per_step``).

    With ``pooling="last"`` and one vanilla layer this is exactly the textbook model
    ``h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)``, ``y = W_hy h_T + b_y`` (see ``RecurrentEncoder``).
    Importable without Lightning, e.g. to embed in another model or export.
    """

    def __init__(
        self,
        input_size: int,
        num_outputs: int,
        cell: Cell = "gru",
        hidden_size: int = 128,
        num_layers: int = 2,
        bidirectional: bool = True,
        dropout: float = 0.0,
        pooling: Pooling = "mean",
        input_norm: bool = False,
        packed: bool = False,
        fused: Fused = "auto",
        per_step: bool = False,
    ) -> None:
        """
        Args:
            input_size: Feature size per frame.
            num_outputs: Classes (or regression outputs).
            cell: Recurrent cell: ``rnn`` (tanh), ``gru`` or ``lstm``.
            hidden_size: Hidden units per direction and layer.
            num_layers: Stacked recurrent layers.
            bidirectional: Read each sequence in both directions.
            dropout: Dropout between recurrent layers and before the head.
            pooling: How frames are summarised: ``mean``, ``last``, ``max`` or ``attention``.
            input_norm: LayerNorm over each input frame.
            packed: Pack sequences instead of the exact padded path (same result; skips padded
                compute; on a 2-core CPU and on an H200 it measured slower than the padded path).
            fused: ``auto``: fused recurrences where they apply (RNN and GRU training on the CPU;
                full-length batches on a GPU, all layers in one cuDNN call), equal to the
                per-module path up to rounding; ``off``: PyTorch's modules one layer and direction
                at a time, e.g. to compare or to debug.
            per_step: One output per time step, ``(B, T, num_outputs)`` (the head applied to every
                frame; ``pooling`` unused), instead of one per sequence. Frames past a sequence's
                end carry the head's bias alone: mask them.
        """
        super().__init__()
        self.input_norm = nn.LayerNorm(input_size) if input_norm else nn.Identity()
        self.encoder = RecurrentEncoder(
            input_size, hidden_size, num_layers, cell, bidirectional, dropout, packed=packed, fused=fused
        )
        self.pooling = SequencePooling(pooling, self.encoder.output_size, self.encoder.num_directions)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.output_size, num_outputs)
        self.per_step = per_step

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.encoder(self.input_norm(features), lengths)
        return self.head(self.dropout(outputs if self.per_step else self.pooling(outputs, lengths)))
