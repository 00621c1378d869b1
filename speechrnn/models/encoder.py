"""The recurrent encoder: stacked RNN/GRU/LSTM layers, one module per direction, exact under padding.

Each layer holds one single-direction ``nn.RNN``/``nn.GRU``/``nn.LSTM`` per direction, so the
recurrences are PyTorch's (cuDNN on GPU, oneDNN on CPU) with their documented equations, e.g. the
vanilla cell ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (``b_h = b_ih + b_hh``).

Padding never changes a valid output, without packing: the forward direction reads each sequence
from its first frame, so padding after the end is only seen after every valid step; the backward
direction reads each sequence reversed *within its own length* (then its outputs are reversed
back), so it too starts at the true last frame. ``packed=True`` instead packs sequences, which
skips the compute spent on padding; both paths give the same valid outputs.

Two fused paths apply where they can (``fused="auto"``; ``"off"`` always runs the modules one
layer and direction at a time). Training a vanilla RNN or a GRU on the CPU goes through
:func:`speechrnn.models.fused.fused_recurrence` (the same parameters and equations, both directions
in one loop, backpropagation through time written out; equal to ``nn.RNN``/``nn.GRU`` up to
rounding). On a GPU, a batch whose sequences all fill its time axis (fixed-length clips) runs every
layer and direction in one call of PyTorch's multi-layer kernel (cuDNN): reversing within each
length is then reversing the whole axis, as that kernel's backward direction does, so the maths is
the padded path's, with the directions and layers overlapped. Neither applies when an inner module
carries forward hooks (pruning, old-style weight norm, activation capture), which they would bypass.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import _VF, nn
from torch.nn.modules import module as torch_module
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechrnn.models.fused import fused_recurrence
from speechrnn.padding import lengths_mask

Cell = Literal["rnn", "gru", "lstm"]
Fused = Literal["auto", "off"]
CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor, time_dim: int = 1) -> torch.Tensor:
    """Reverse each sequence of ``x`` (``(batch, time, ...)``, or ``(time, batch, ...)`` with
    ``time_dim=0``) over its first ``lengths[b]`` frames; padding stays in place. The operation is
    its own inverse."""
    steps = torch.arange(x.shape[time_dim], device=x.device)
    lengths = lengths.to(x.device)
    if time_dim == 0:
        steps, lengths = steps[:, None], lengths[None, :]
    else:
        steps, lengths = steps[None, :], lengths[:, None]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return x.gather(time_dim, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class RecurrentEncoder(nn.Module):
    """Stacked (optionally bidirectional) recurrent layers over ``(batch, time, features)``.

    ``forward`` returns outputs ``(batch, time, num_directions * hidden_size)`` whose padded frames
    are zero; the backward direction's output at frame ``t`` summarises frames ``t..length-1``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        cell: Cell = "gru",
        bidirectional: bool = True,
        dropout: float = 0.0,
        packed: bool = False,
        fused: Fused = "auto",
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        if num_layers < 1 or hidden_size < 1:
            raise ValueError(f"num_layers and hidden_size must be >= 1, got {num_layers} and {hidden_size}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.cell = cell
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.packed = packed
        if fused not in ("auto", "off"):
            raise ValueError(f"fused must be 'auto' or 'off', got {fused!r}")
        self.fused = fused
        self.layers = nn.ModuleList(
            nn.ModuleList(
                CELLS[cell](
                    input_size if layer == 0 else hidden_size * self.num_directions, hidden_size, batch_first=True
                )
                for _ in range(self.num_directions)
            )
            for layer in range(num_layers)
        )
        if cell == "lstm":
            self._open_forget_gates()
        self.dropout = nn.Dropout(dropout)

    @torch.no_grad()
    def _open_forget_gates(self) -> None:
        """Start every LSTM forget gate near open (bias 1, as Keras's ``unit_forget_bias`` and
        Jozefowicz et al. 2015): PyTorch's default (about 0) halves the cell state at each step at
        first, so a last-state readout over tens of steps hardly trains (measured in benchmarks/README)."""
        hidden = self.hidden_size
        for directions in self.layers:
            for lstm in directions:
                lstm.bias_ih_l0[hidden : 2 * hidden] = 1.0
                lstm.bias_hh_l0[hidden : 2 * hidden] = 0.0

    @property
    def output_size(self) -> int:
        return self.hidden_size * self.num_directions

    @staticmethod
    def _run(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor, state: State | None, packed: bool):
        if not packed:
            return rnn(x, state)
        sequence = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, new_state = rnn(sequence, state)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=x.shape[1])
        return output, new_state

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        states: list[State] | None = None,
        return_states: bool = False,
    ) -> tuple[torch.Tensor, list[State] | None]:
        """Encode ``x: (batch, time, input_size)`` with ``lengths: (batch,)`` int64 (CPU).

        ``states`` (unidirectional only) are each layer's hidden state from a previous chunk, for
        streaming; with ``return_states`` the states after each sequence's last valid frame are
        returned too (``(h, c)`` pairs for LSTMs, each ``(1, batch, hidden)``).
        """
        if states is not None and self.bidirectional:
            raise ValueError("a bidirectional encoder cannot carry state between chunks: it needs the future")
        # Only states need to know whether every sequence fills the batch (no data-dependent branch
        # otherwise, so torch.compile captures the whole forward).
        full = return_states and bool((lengths == x.shape[1]).all())
        # An LSTM's cell state is not among its outputs, so only packing gives it at ragged ends.
        packed = self.packed or (return_states and self.cell == "lstm" and not full)
        mask = lengths_mask(lengths, x.shape[1], x.device).unsqueeze(-1)
        if self._fused_applies(x, packed, states, return_states):
            return self._forward_fused(x, lengths) * mask, None
        if self._stack_applies(x, lengths, packed, states, return_states):
            return self._forward_stack(x), None
        final_states: list[State] = []
        for depth, directions in enumerate(self.layers):
            if depth > 0:
                x = self.dropout(x)
            state = None if states is None else states[depth]
            forward_out, forward_state = self._run(directions[0], x, lengths, state, packed)
            if self.bidirectional:
                backward_out, _ = self._run(directions[1], reverse_within_length(x, lengths), lengths, None, packed)
                x = torch.cat([forward_out, reverse_within_length(backward_out, lengths)], dim=-1)
            else:
                x = forward_out
            x = x * mask
            if return_states:
                if not (packed or full):
                    last = (lengths.to(x.device) - 1).clamp_min(0)
                    forward_state = forward_out[torch.arange(x.shape[0], device=x.device), last].unsqueeze(0)
                final_states.append(forward_state)
        return x, (final_states if return_states else None)

    def _unhooked(self) -> bool:
        """No forward hook (of a module or global) that a fused path would bypass."""
        if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.layers.modules())

    def _fused_applies(self, x: torch.Tensor, packed: bool, states: list[State] | None, return_states: bool) -> bool:
        return (
            self.fused == "auto"
            and self.cell in ("rnn", "gru")
            and not packed
            and states is None
            and not return_states
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and torch.is_grad_enabled()
            and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting()
            and self._unhooked()
        )

    def _stack_applies(
        self, x: torch.Tensor, lengths: torch.Tensor, packed: bool, states: list[State] | None, return_states: bool
    ) -> bool:
        return (
            self.fused == "auto"
            and x.is_cuda
            and not packed
            and states is None
            and not return_states
            and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting()
            and self._unhooked()
            and bool((lengths == x.shape[1]).all())
        )

    def _forward_stack(self, x: torch.Tensor) -> torch.Tensor:
        """Every layer and direction in one call of the multi-layer kernel, for sequences that all
        fill the time axis: the padded path's outputs, with none of its reversals."""
        weights = [weight for directions in self.layers for rnn in directions for weight in rnn._flat_weights]
        zeros = x.new_zeros(self.num_layers * self.num_directions, x.shape[0], self.hidden_size)
        kernel = {"rnn": _VF.rnn_tanh, "gru": _VF.gru, "lstm": _VF.lstm}[self.cell]
        state = (zeros, zeros) if self.cell == "lstm" else zeros
        with warnings.catch_warnings():
            # the per-direction modules' weights are copied into the kernel's flat layout each call
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
            output = kernel(
                x, state, weights, True, self.num_layers, self.dropout.p, self.training, self.bidirectional, True
            )[0]
        return output

    def _forward_fused(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The padded path's layers through :func:`fused_recurrence`, time-major; padding not yet zeroed."""
        x = x.transpose(0, 1)
        for depth, directions in enumerate(self.layers):
            if depth > 0:
                x = self.dropout(x)
            if self.bidirectional:
                inputs = torch.stack([x, reverse_within_length(x, lengths, time_dim=0)])
                forward_out, backward_out = fused_recurrence(inputs, directions).unbind(0)
                x = torch.cat([forward_out, reverse_within_length(backward_out, lengths, time_dim=0)], dim=-1)
            else:
                x = fused_recurrence(x.unsqueeze(0).contiguous(), directions).squeeze(0)
        return x.transpose(0, 1)
