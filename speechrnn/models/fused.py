"""Recurrent layers for CPU training whose backpropagation through time is written out by hand.

Two cells, each exactly PyTorch's (same parameters, same equations). The vanilla RNN (``nn.RNN``,
tanh), the project's textbook recurrence::

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)

and the GRU (``nn.GRU``)::

    r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

Why they exist: on the CPU, PyTorch has no fused kernel for either (oneDNN serves only LSTMs), so
autograd records several small operations per time step (a dozen for the GRU), each with its own
backward, and accumulates the recurrent weight gradient one step at a time. Here both directions
of a bidirectional layer run in one loop as batched matrix products; the backward pass keeps
inside its loop only what is truly sequential, ``dL/dh_{t-1} = dL/dy_{t-1} + dG_t W_hh`` (plus
``dL/dh_t * z_t`` for the GRU; ``dG_t``: the gradients of the pre-activations at step t), and the
weight and input gradients are one matrix product each over all steps (measured gains:
``benchmarks/README.md``). On a GPU the encoder keeps PyTorch's modules (cuDNN). The results equal
``nn.RNN``/``nn.GRU``'s up to floating-point rounding (the sums run in another order).

Gradients with respect to the initial state are not produced (it is always zero here), and the
functions are differentiable once (no double backward).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class ScratchPool:
    """Reuses large scratch buffers between calls.

    A fresh multi-megabyte tensor comes from the C allocator as new, untouched pages, and faulting
    them in is costly (``benchmarks/README.md``). Only buffers that never leave the function go
    through it (nothing the caller or autograd can still see is recycled, so a retained graph
    backpropagates twice correctly); it keeps at most ``max_bytes``, until :meth:`clear`.
    """

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device."""
        numel = math.prod(shape)
        with self._lock:
            fits = [b for b in self._free if b.dtype == like.dtype and b.device == like.device and b.numel() >= numel]
            if fits:
                best = min(fits, key=torch.Tensor.numel)
                self._free = [b for b in self._free if b is not best]
                return best[:numel].view(shape)
        return torch.empty(shape, dtype=like.dtype, device=like.device)

    def clear(self) -> None:
        """Drop every kept buffer (their memory returns to the allocator)."""
        with self._lock:
            self._free = []

    @property
    def kept_bytes(self) -> int:
        with self._lock:
            return sum(b.numel() * b.element_size() for b in self._free)

    def give(self, *tensors: torch.Tensor) -> None:
        """Return buffers from :meth:`take` once nothing reads them any more."""
        with self._lock:
            for tensor in tensors:
                storage = tensor.untyped_storage()
                flat = tensor.new_empty(0).set_(storage, 0, (storage.nbytes() // tensor.element_size(),))
                self._free.append(flat)
            self._free.sort(key=torch.Tensor.numel, reverse=True)
            while sum(b.numel() * b.element_size() for b in self._free) > self.max_bytes:
                self._free.pop(0 if self._free[0].numel() * self._free[0].element_size() > self.max_bytes else -1)


SCRATCH = ScratchPool()


def release_scratch() -> None:
    """Free the scratch buffers the fused recurrences keep between calls (up to 512 MiB), e.g. once
    CPU training is over in a process that goes on."""
    SCRATCH.clear()


def _linear_grads(
    grad_pre: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, needs: tuple[bool, bool, bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``pre = inputs @ weight^T + bias`` over all steps at once, each only if needed
    (``needs``: inputs, weight, bias): ``grad_pre (D, T, B, G)``, ``inputs (D, T, B, K)``,
    ``weight (D, G, K)``."""
    directions, steps, batch, size = inputs.shape
    flat = grad_pre.view(directions, steps * batch, -1)
    grad_inputs = torch.bmm(flat, weight).view(inputs.shape) if needs[0] else None
    grad_weight = torch.bmm(flat.transpose(1, 2), inputs.reshape(directions, steps * batch, size)) if needs[1] else None
    return grad_inputs, grad_weight, flat.sum(1) if needs[2] else None


def _layout(x: torch.Tensor, w_hh: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int, int]]:
    """``x`` contiguous, and its sizes: directions, steps, batch, inputs, then the hidden size."""
    return x.contiguous(), (*x.shape, w_hh.shape[2])


class FusedGRUFunction(torch.autograd.Function):
    """``D`` independent single-layer GRUs over ``x: (D, time, batch, input)`` from zero states;
    returns every hidden state ``(D, time, batch, hidden)``. Weights are stacked over ``D``:
    ``w_ih (D, 3H, input)``, ``w_hh (D, 3H, H)``, biases ``(D, 3H)``, gates in PyTorch's order r, z, n.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor
    ) -> torch.Tensor:
        x, (directions, steps, batch, inputs, hidden) = _layout(x, w_hh)
        two = 2 * hidden
        # pre[:, t, :, :2H] accumulates the whole r, z pre-activation; pre[..., 2H:] becomes W_hn h + b_hn.
        bias = torch.cat([b_ih[:, :two] + b_hh[:, :two], b_ih[:, two:]], dim=1)
        pre = torch.baddbmm(bias.unsqueeze(1), x.reshape(directions, steps * batch, inputs), w_ih.transpose(1, 2))
        pre = pre.view(directions, steps, batch, 3 * hidden)
        input_n = SCRATCH.take((directions, steps, batch, hidden), x).copy_(pre[..., two:])
        pre[..., two:] = b_hh[:, None, None, two:]
        states = x.new_empty(directions, steps + 1, batch, hidden)
        states[:, 0].zero_()
        n = x.new_empty(directions, steps, batch, hidden)
        w_hh_t = w_hh.transpose(1, 2).contiguous()
        for t in range(steps):
            pre[:, t].baddbmm_(states[:, t], w_hh_t)
            pre[:, t, :, :two].sigmoid_()  # from here on pre[..., :2H] holds r_t, z_t
            torch.addcmul(input_n[:, t], pre[:, t, :, :hidden], pre[:, t, :, two:], out=n[:, t]).tanh_()
            torch.lerp(n[:, t], states[:, t], pre[:, t, :, hidden:two], out=states[:, t + 1])
        SCRATCH.give(input_n)
        ctx.save_for_backward(x, w_ih, w_hh, states, pre[..., two:], pre[..., :two], n)
        return states[:, 1:]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, w_ih, w_hh, states, hidden_n, rz, n = ctx.saved_tensors
        directions, steps, batch, _ = x.shape
        hidden = w_hh.shape[2]
        two = 2 * hidden
        r, z = rz[..., :hidden], rz[..., hidden:]
        # Per-step factors from d(loss)/d(h_t) to each gate's pre-activation, all steps at once.
        dn_pre = SCRATCH.take((directions, steps, batch, hidden), x)
        torch.ops.aten.tanh_backward(torch.sub(1, z, out=dn_pre), n, grad_input=dn_pre)  # (1 - z)(1 - n^2)
        factors = SCRATCH.take((directions, steps, batch, 3, hidden), x)
        torch.mul(dn_pre, hidden_n, out=factors[..., 0, :])
        torch.sub(states[:, :-1], n, out=factors[..., 1, :])
        rz_factors = factors[..., :2, :].view(directions, steps, batch, two)
        torch.ops.aten.sigmoid_backward(rz_factors, rz, grad_input=rz_factors)
        torch.mul(dn_pre, r, out=factors[..., 2, :])

        grad_gates = SCRATCH.take((directions, steps, batch, 3 * hidden), x)  # d pre-activations of W_hh h
        gate_view = grad_gates.view(directions, steps, batch, 3, hidden)
        # d(loss)/d(h_t) including the future, time-major so each step's product writes contiguously.
        grad_states = SCRATCH.take((steps, directions, batch, hidden), x).copy_(grad_out.transpose(0, 1))
        for t in range(steps - 1, -1, -1):
            torch.mul(grad_states[t].unsqueeze(-2), factors[:, t], out=gate_view[:, t])
            if t > 0:
                grad_states[t - 1].addcmul_(grad_states[t], z[:, t]).baddbmm_(grad_gates[:, t], w_hh)

        needs = ctx.needs_input_grad
        _, grad_w_hh, grad_b_hh = _linear_grads(grad_gates, states[:, :-1], w_hh, (False, needs[2], needs[4]))
        torch.mul(grad_states.transpose(0, 1), dn_pre, out=grad_gates[..., two:])  # W_in x_t is not gated by r_t
        grad_x, grad_w_ih, grad_b_ih = _linear_grads(grad_gates, x, w_ih, (needs[0], needs[1], needs[3]))
        SCRATCH.give(dn_pre, factors, grad_gates, grad_states)
        return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


class FusedTanhRNNFunction(torch.autograd.Function):
    """``D`` independent single-layer tanh RNNs over ``x: (D, time, batch, input)`` from zero states;
    returns every hidden state ``(D, time, batch, hidden)``. Weights are stacked over ``D``:
    ``w_ih (D, H, input)``, ``w_hh (D, H, H)``, biases ``(D, H)``.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor
    ) -> torch.Tensor:
        x, (directions, steps, batch, inputs, hidden) = _layout(x, w_hh)
        pre = SCRATCH.take((directions, steps, batch, hidden), x)
        torch.baddbmm(
            (b_ih + b_hh).unsqueeze(1),
            x.reshape(directions, steps * batch, inputs),
            w_ih.transpose(1, 2),
            out=pre.view(directions, steps * batch, hidden),
        )
        states = x.new_empty(directions, steps + 1, batch, hidden)
        states[:, 0].zero_()
        w_hh_t = w_hh.transpose(1, 2).contiguous()
        for t in range(steps):
            torch.baddbmm(pre[:, t], states[:, t], w_hh_t, out=states[:, t + 1]).tanh_()
        SCRATCH.give(pre)
        ctx.save_for_backward(x, w_ih, w_hh, states)
        return states[:, 1:]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, w_ih, w_hh, states = ctx.saved_tensors
        directions, steps, batch, _ = x.shape
        hidden = w_hh.shape[2]
        grad_pre = SCRATCH.take((directions, steps, batch, hidden), x)  # d pre-activations
        # d(loss)/d(h_t) including the future, time-major so each step's product writes contiguously.
        grad_states = SCRATCH.take((steps, directions, batch, hidden), x).copy_(grad_out.transpose(0, 1))
        for t in range(steps - 1, -1, -1):
            torch.ops.aten.tanh_backward(grad_states[t], states[:, t + 1], grad_input=grad_pre[:, t])
            if t > 0:
                grad_states[t - 1].baddbmm_(grad_pre[:, t], w_hh)

        needs = ctx.needs_input_grad
        _, grad_w_hh, grad_b_hh = _linear_grads(grad_pre, states[:, :-1], w_hh, (False, needs[2], needs[4]))
        grad_x, grad_w_ih, grad_b_ih = _linear_grads(grad_pre, x, w_ih, (needs[0], needs[1], needs[3]))
        SCRATCH.give(grad_pre, grad_states)
        return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


FUSED_FUNCTIONS: dict[str, type[torch.autograd.Function]] = {"rnn": FusedTanhRNNFunction, "gru": FusedGRUFunction}


def fused_recurrence(x: torch.Tensor, cells: Sequence[nn.RNN | nn.GRU]) -> torch.Tensor:
    """Run single-layer, biased tanh ``nn.RNN`` or ``nn.GRU`` modules (one per direction, all of one
    kind) over ``x: (D, time, batch, input)`` from zero states, with their own parameters; returns
    ``(D, time, batch, hidden)``."""
    kind = "gru" if isinstance(cells[0], nn.GRU) else "rnn"
    if kind == "rnn" and cells[0].nonlinearity != "tanh":
        raise ValueError(f"the fused RNN is the tanh recurrence, got nonlinearity={cells[0].nonlinearity!r}")
    return FUSED_FUNCTIONS[kind].apply(
        x,
        torch.stack([cell.weight_ih_l0 for cell in cells]),
        torch.stack([cell.weight_hh_l0 for cell in cells]),
        torch.stack([cell.bias_ih_l0 for cell in cells]),
        torch.stack([cell.bias_hh_l0 for cell in cells]),
    )
