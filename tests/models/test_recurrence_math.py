"""The package's recurrent networks honour the textbook maths exactly.

Every reference here is plain NumPy (float64) written straight from the equations, independent of
PyTorch: the vanilla RNN ``h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)``, ``y = W_hy h_T + b_y``; its
backpropagation through time by hand; the GRU and LSTM gate equations of the PyTorch docs; the
stacked and bidirectional wiring. The package model is run in float64 (``.double()``) for tight
tolerances and in float32 for the precision it trains in. Batches are ragged (padded with finite
garbage) so each check also shows that padding never leaks into a valid result.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader

from speechrnn.models import RecurrentEncoder, RNNClassifier, SequenceClassifierNet

LENGTHS = (6, 3, 5, 1)  # ragged on purpose: the longest is not first, and one sequence is a single frame
GARBAGE = 7.0  # finite junk in padded frames (NaN would survive the ``* mask`` multiplication)
TIGHT = {"rtol": 1e-10, "atol": 1e-10}  # float64 torch vs float64 NumPy
LOOSE = {"rtol": 1e-5, "atol": 1e-5}  # float32 torch vs float64 NumPy

RNNWeights = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # W_ih, W_hh, b_ih, b_hh


# --------------------------------------------------------------------------------------------- #
# NumPy references, written from the equations
# --------------------------------------------------------------------------------------------- #


def ragged_batch(
    feature_dim: int, lengths: tuple[int, ...] = LENGTHS, seed: int = 0, scale: float = 1.0
) -> tuple[np.ndarray, torch.Tensor]:
    """``(batch, max(lengths), feature_dim)`` float64 inputs, ``GARBAGE`` after each length; int64 lengths."""
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((len(lengths), max(lengths), feature_dim))
    for b, length in enumerate(lengths):
        x[b, length:] = GARBAGE
    return x, torch.tensor(lengths, dtype=torch.int64)


def weights_of(module: nn.RNNBase) -> RNNWeights:
    """The single-layer, single-direction module's ``weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0``."""
    W_ih, W_hh, b_ih, b_hh = (
        getattr(module, name).detach().double().numpy().copy()
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    )
    return W_ih, W_hh, b_ih, b_hh


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def vanilla_sequence(x: np.ndarray, W_xh: np.ndarray, W_hh: np.ndarray, b_h: np.ndarray) -> np.ndarray:
    """``h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)`` from ``h_{-1} = 0`` over ``x: (T, F)``; returns ``(T, H)``."""
    h = np.zeros(W_hh.shape[0])
    states = []
    for x_t in x:
        h = np.tanh(W_xh @ x_t + W_hh @ h + b_h)
        states.append(h)
    return np.stack(states)


def rnn_sequence(x: np.ndarray, weights: RNNWeights) -> np.ndarray:
    """The vanilla cell with PyTorch's two biases folded into one: ``b_h = b_ih + b_hh``."""
    W_ih, W_hh, b_ih, b_hh = weights
    return vanilla_sequence(x, W_ih, W_hh, b_ih + b_hh)


def gru_sequence(x: np.ndarray, weights: RNNWeights) -> np.ndarray:
    """The GRU of the PyTorch docs, with ``weight_ih = [W_ir | W_iz | W_in]`` (rows), likewise ``weight_hh``:

    ``r = σ(W_ir x + b_ir + W_hr h + b_hr)``, ``z = σ(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``, ``h' = (1 − z) ⊙ n + z ⊙ h``.
    """
    W_ih, W_hh, b_ih, b_hh = weights
    H = W_hh.shape[1]
    W_ir, W_iz, W_in = W_ih[:H], W_ih[H : 2 * H], W_ih[2 * H :]
    W_hr, W_hz, W_hn = W_hh[:H], W_hh[H : 2 * H], W_hh[2 * H :]
    b_ir, b_iz, b_in = b_ih[:H], b_ih[H : 2 * H], b_ih[2 * H :]
    b_hr, b_hz, b_hn = b_hh[:H], b_hh[H : 2 * H], b_hh[2 * H :]
    h = np.zeros(H)
    states = []
    for x_t in x:
        r = sigmoid(W_ir @ x_t + b_ir + W_hr @ h + b_hr)
        z = sigmoid(W_iz @ x_t + b_iz + W_hz @ h + b_hz)
        n = np.tanh(W_in @ x_t + b_in + r * (W_hn @ h + b_hn))
        h = (1 - z) * n + z * h
        states.append(h)
    return np.stack(states)


def lstm_sequence(x: np.ndarray, weights: RNNWeights) -> np.ndarray:
    """The LSTM of the PyTorch docs, with ``weight_ih = [W_ii | W_if | W_ig | W_io]`` (rows), likewise ``weight_hh``:

    ``i = σ(W_ii x + b_ii + W_hi h + b_hi)``, ``f = σ(W_if x + b_if + W_hf h + b_hf)``,
    ``g = tanh(W_ig x + b_ig + W_hg h + b_hg)``, ``o = σ(W_io x + b_io + W_ho h + b_ho)``,
    ``c' = f ⊙ c + i ⊙ g``, ``h' = o ⊙ tanh(c')``.
    """
    W_ih, W_hh, b_ih, b_hh = weights
    H = W_hh.shape[1]
    W_ii, W_if, W_ig, W_io = (W_ih[k * H : (k + 1) * H] for k in range(4))
    W_hi, W_hf, W_hg, W_ho = (W_hh[k * H : (k + 1) * H] for k in range(4))
    b_ii, b_if, b_ig, b_io = (b_ih[k * H : (k + 1) * H] for k in range(4))
    b_hi, b_hf, b_hg, b_ho = (b_hh[k * H : (k + 1) * H] for k in range(4))
    h, c = np.zeros(H), np.zeros(H)
    states = []
    for x_t in x:
        i = sigmoid(W_ii @ x_t + b_ii + W_hi @ h + b_hi)
        f = sigmoid(W_if @ x_t + b_if + W_hf @ h + b_hf)
        g = np.tanh(W_ig @ x_t + b_ig + W_hg @ h + b_hg)
        o = sigmoid(W_io @ x_t + b_io + W_ho @ h + b_ho)
        c = f * c + i * g
        h = o * np.tanh(c)
        states.append(h)
    return np.stack(states)


SEQUENCES = {"rnn": rnn_sequence, "gru": gru_sequence, "lstm": lstm_sequence}


def reference_encoder(x: np.ndarray, lengths: torch.Tensor, encoder: RecurrentEncoder) -> np.ndarray:
    """Stacked (bi)directional recurrence per sequence, each over its own valid frames only.

    The forward direction reads ``x_0 .. x_{L-1}``; the backward one reads ``x_{L-1} .. x_0`` and its
    state after reading ``x_t`` is the output at frame ``t``; a layer's output ``[forward | backward]``
    is the next layer's input. Padded frames are zero.
    """
    batch, time, _ = x.shape
    out = np.zeros((batch, time, encoder.output_size))
    for b, length in enumerate(lengths.tolist()):
        layer_input = x[b, :length]
        for directions in encoder.layers:
            forward = SEQUENCES[encoder.cell](layer_input, weights_of(directions[0]))
            parts = [forward]
            if encoder.bidirectional:
                parts.append(SEQUENCES[encoder.cell](layer_input[::-1], weights_of(directions[1]))[::-1])
            layer_input = np.concatenate(parts, axis=-1)
        out[b, :length] = layer_input
    return out


def reference_last(outputs: np.ndarray, lengths: torch.Tensor, hidden: int, bidirectional: bool) -> np.ndarray:
    """Many-to-one summary: forward state at the true last frame ``h_{L-1}`` (and backward state at frame 0)."""
    rows = []
    for b, length in enumerate(lengths.tolist()):
        row = outputs[b, length - 1, :hidden]
        if bidirectional:
            row = np.concatenate([row, outputs[b, 0, hidden:]])
        rows.append(row)
    return np.stack(rows)


def head_of(net: SequenceClassifierNet) -> tuple[np.ndarray, np.ndarray]:
    """``W_hy, b_y`` of the output layer ``y = W_hy s + b_y``."""
    return net.head.weight.detach().double().numpy(), net.head.bias.detach().double().numpy()


def make_net(
    input_size: int, num_outputs: int, dtype: torch.dtype = torch.float64, **kwargs: object
) -> SequenceClassifierNet:
    """A seeded ``SequenceClassifierNet`` in eval mode: by default one unidirectional vanilla layer,
    ``pooling="last"``, no dropout, no input norm (overridable through ``kwargs``)."""
    torch.manual_seed(0)
    options: dict[str, object] = {"cell": "rnn", "hidden_size": 5, "num_layers": 1, "bidirectional": False}
    options |= {"pooling": "last", "dropout": 0.0, "input_norm": False, **kwargs}
    return SequenceClassifierNet(input_size, num_outputs, **options).to(dtype).eval()


def as_torch(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(x).to(dtype)


def check(actual: torch.Tensor, expected: np.ndarray, dtype: torch.dtype) -> None:
    torch.testing.assert_close(
        actual.detach(), as_torch(expected, dtype), **(TIGHT if dtype == torch.float64 else LOOSE)
    )


# --------------------------------------------------------------------------------------------- #
# 1. Vanilla RNN forward
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vanilla_rnn_forward_is_the_textbook_recurrence(dtype: torch.dtype) -> None:
    """One vanilla layer + ``pooling="last"`` is exactly ``h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)``,
    ``y = W_hy h_T + b_y``, at every time step, and on a ragged batch ``h_T`` is each sequence's true
    last frame (padding, filled with garbage, is never read); padded encoder outputs are zero."""
    net = make_net(4, 3, dtype)
    rnn = net.encoder.layers[0][0]
    assert isinstance(rnn, nn.RNN) and rnn.nonlinearity == "tanh" and rnn.num_layers == 1
    W_xh = rnn.weight_ih_l0.detach().double().numpy()
    W_hh = rnn.weight_hh_l0.detach().double().numpy()
    # PyTorch keeps two biases (bias_ih, bias_hh); they only ever appear summed: b_h = b_ih + b_hh.
    b_h = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().double().numpy()
    W_hy, b_y = head_of(net)
    x, lengths = ragged_batch(4)

    outputs, _ = net.encoder(as_torch(x, dtype), lengths)
    logits = net(as_torch(x, dtype), lengths)

    expected_logits = []
    for b, length in enumerate(lengths.tolist()):
        h = vanilla_sequence(x[b, :length], W_xh, W_hh, b_h)  # (L, H): every step's hidden state
        check(outputs[b, :length], h, dtype)
        assert torch.all(outputs[b, length:] == 0)
        expected_logits.append(W_hy @ h[-1] + b_y)  # y = W_hy h_T + b_y with T = this sequence's last frame
    check(logits, np.stack(expected_logits), dtype)


# --------------------------------------------------------------------------------------------- #
# 2. Backpropagation through time by hand; stacked and bidirectional wiring
# --------------------------------------------------------------------------------------------- #


def bptt(
    x: np.ndarray,
    lengths: list[int],
    targets: np.ndarray,
    W_xh: np.ndarray,
    W_hh: np.ndarray,
    b_h: np.ndarray,
    W_hy: np.ndarray,
    b_y: np.ndarray,
) -> dict[str, np.ndarray]:
    """Gradients of ``L = mean_b CE(softmax(W_hy h_T + b_y), target_b)`` by backpropagation through time.

    Per sequence: ``dy = (softmax(y) - onehot) / B``; ``dW_hy += dy h_T^T``, ``db_y += dy``; then
    ``delta_t = (W_hy^T dy [only at t = T] + W_hh^T delta_{t+1}) ⊙ (1 - h_t^2)`` for ``t = T .. 0``,
    accumulating ``dW_xh += delta_t x_t^T``, ``dW_hh += delta_t h_{t-1}^T``, ``db_h += delta_t``, and
    ``dx_t = W_xh^T delta_t`` (zero on padding).
    """
    grads = {
        name: np.zeros_like(value) for name, value in {"W_xh": W_xh, "W_hh": W_hh, "b_h": b_h, "W_hy": W_hy}.items()
    }
    grads |= {"b_y": np.zeros_like(b_y), "x": np.zeros_like(x), "loss": np.zeros(())}
    batch = len(lengths)
    for b, length in enumerate(lengths):
        h = vanilla_sequence(x[b, :length], W_xh, W_hh, b_h)
        y = W_hy @ h[-1] + b_y
        p = np.exp(y - y.max())
        p /= p.sum()
        grads["loss"] += -np.log(p[targets[b]]) / batch
        dy = (p - np.eye(len(b_y))[targets[b]]) / batch
        grads["W_hy"] += np.outer(dy, h[-1])
        grads["b_y"] += dy
        dh = W_hy.T @ dy  # dL/dh_T: the loss only reads the last state
        for t in range(length - 1, -1, -1):
            delta = dh * (1 - h[t] ** 2)  # through tanh: dL/d(pre-activation at t)
            h_prev = h[t - 1] if t > 0 else np.zeros_like(b_h)
            grads["W_xh"] += np.outer(delta, x[b, t])
            grads["W_hh"] += np.outer(delta, h_prev)
            grads["b_h"] += delta
            grads["x"][b, t] = W_xh.T @ delta
            dh = W_hh.T @ delta  # dL/dh_{t-1}
    return grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bptt_by_hand_matches_autograd(dtype: torch.dtype) -> None:
    """Hand-written backpropagation through time gives autograd's gradients for every parameter of the
    package model (and for the inputs): ``bias_ih.grad == bias_hh.grad == dL/db_h`` since
    ``b_h = b_ih + b_hh``, and padded frames get exactly zero gradient."""
    net = make_net(4, 3, dtype, hidden_size=6)
    rnn = net.encoder.layers[0][0]
    W_xh, W_hh, b_ih, b_hh = weights_of(rnn)
    W_hy, b_y = head_of(net)
    x, lengths = ragged_batch(4, seed=1)
    targets = np.array([2, 0, 1, 2])

    inputs = as_torch(x, dtype).requires_grad_(True)
    loss = F.cross_entropy(net(inputs, lengths), torch.from_numpy(targets))
    loss.backward()

    expected = bptt(x, lengths.tolist(), targets, W_xh, W_hh, b_ih + b_hh, W_hy, b_y)
    check(loss, expected["loss"], dtype)
    check(rnn.weight_ih_l0.grad, expected["W_xh"], dtype)
    check(rnn.weight_hh_l0.grad, expected["W_hh"], dtype)
    check(rnn.bias_ih_l0.grad, expected["b_h"], dtype)
    check(rnn.bias_hh_l0.grad, expected["b_h"], dtype)
    check(net.head.weight.grad, expected["W_hy"], dtype)
    check(net.head.bias.grad, expected["b_y"], dtype)
    check(inputs.grad, expected["x"], dtype)
    for b, length in enumerate(lengths.tolist()):
        assert torch.all(inputs.grad[b, length:] == 0)


def test_two_layer_stacked_vanilla_rnn_forward() -> None:
    """Two stacked vanilla layers are ``h^1_t = tanh(W^1_xh x_t + W^1_hh h^1_{t-1} + b^1)`` and
    ``h^2_t = tanh(W^2_xh h^1_t + W^2_hh h^2_{t-1} + b^2)``; the encoder outputs are ``h^2`` and the
    logits ``W_hy h^2_T + b_y``."""
    net = make_net(4, 3, num_layers=2)
    W1_xh, W1_hh, b1_ih, b1_hh = weights_of(net.encoder.layers[0][0])
    W2_xh, W2_hh, b2_ih, b2_hh = weights_of(net.encoder.layers[1][0])
    W_hy, b_y = head_of(net)
    x, lengths = ragged_batch(4, seed=2)

    outputs, _ = net.encoder(as_torch(x, torch.float64), lengths)
    logits = net(as_torch(x, torch.float64), lengths)

    expected_logits = []
    for b, length in enumerate(lengths.tolist()):
        h1 = vanilla_sequence(x[b, :length], W1_xh, W1_hh, b1_ih + b1_hh)
        h2 = vanilla_sequence(h1, W2_xh, W2_hh, b2_ih + b2_hh)
        check(outputs[b, :length], h2, torch.float64)
        expected_logits.append(W_hy @ h2[-1] + b_y)
    check(logits, np.stack(expected_logits), torch.float64)


def test_bidirectional_vanilla_rnn_forward_and_last_pooling() -> None:
    """A bidirectional layer runs a second, independent vanilla recurrence over ``x_{L-1} .. x_0`` of
    each sequence (within its own length, so it starts at the true last frame, never on padding);
    frame ``t`` outputs ``[h^f_t | h^b_t]``, and ``pooling="last"`` summarises with
    ``[h^f_{L-1} | h^b_0]``: both directions having read the whole sequence."""
    net = make_net(4, 3, bidirectional=True)
    W_xh_f, W_hh_f, b_ih_f, b_hh_f = weights_of(net.encoder.layers[0][0])
    W_xh_b, W_hh_b, b_ih_b, b_hh_b = weights_of(net.encoder.layers[0][1])
    W_hy, b_y = head_of(net)
    x, lengths = ragged_batch(4, seed=3)

    outputs, _ = net.encoder(as_torch(x, torch.float64), lengths)
    logits = net(as_torch(x, torch.float64), lengths)

    expected_logits = []
    for b, length in enumerate(lengths.tolist()):
        forward = vanilla_sequence(x[b, :length], W_xh_f, W_hh_f, b_ih_f + b_hh_f)
        backward = vanilla_sequence(x[b, :length][::-1], W_xh_b, W_hh_b, b_ih_b + b_hh_b)[::-1]
        check(outputs[b, :length], np.concatenate([forward, backward], axis=-1), torch.float64)
        assert torch.all(outputs[b, length:] == 0)
        expected_logits.append(W_hy @ np.concatenate([forward[-1], backward[0]]) + b_y)
    check(logits, np.stack(expected_logits), torch.float64)


# --------------------------------------------------------------------------------------------- #
# 3. Finite differences
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_gradients_match_central_finite_differences(cell: str) -> None:
    """Autograd's gradients of a tiny bidirectional two-layer model with mean pooling agree with central
    finite differences (float64, eps 1e-6) for every parameter entry and every input, via
    ``torch.autograd.gradcheck`` on the model as a function of its parameters and inputs."""
    net = make_net(2, 2, cell=cell, hidden_size=2, num_layers=2, bidirectional=True, pooling="mean")
    names = [name for name, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())
    x, lengths = ragged_batch(2, lengths=(4, 2, 3), seed=4)
    inputs = as_torch(x, torch.float64).requires_grad_(True)

    def logits(*args: torch.Tensor) -> torch.Tensor:
        return functional_call(net, dict(zip(names, args[:-1], strict=True)), (args[-1], lengths))

    assert torch.autograd.gradcheck(logits, (*params, inputs), eps=1e-6, atol=1e-7, rtol=1e-6)


# --------------------------------------------------------------------------------------------- #
# 4. GRU and LSTM gate equations
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_cells_follow_their_documented_equations(cell: str, bidirectional: bool, dtype: torch.dtype) -> None:
    """The GRU and LSTM encoders (two layers, uni- and bidirectional, ragged batch) equal the NumPy
    gate equations of the PyTorch docs with the documented weight layouts; the logits with
    ``pooling="last"`` equal ``W_hy [h^f_{L-1} | h^b_0] + b_y``."""
    net = make_net(3, 2, dtype, cell=cell, hidden_size=4, num_layers=2, bidirectional=bidirectional)
    assert isinstance(net.encoder.layers[0][0], {"gru": nn.GRU, "lstm": nn.LSTM}[cell])
    x, lengths = ragged_batch(3, seed=5)

    outputs, _ = net.encoder(as_torch(x, dtype), lengths)
    logits = net(as_torch(x, dtype), lengths)

    expected = reference_encoder(x, lengths, net.encoder)
    check(outputs, expected, dtype)
    W_hy, b_y = head_of(net)
    summary = reference_last(expected, lengths, net.encoder.hidden_size, bidirectional)
    check(logits, summary @ W_hy.T + b_y, dtype)


# --------------------------------------------------------------------------------------------- #
# 5. Vanishing and exploding gradients, and clipping
# --------------------------------------------------------------------------------------------- #

LONG = 200


def linear_regime_rnn(radius: float, size: int = 6) -> tuple[SequenceClassifierNet, torch.Tensor]:
    """A float64 one-layer vanilla RNN with ``W_xh = I``, zero biases and ``W_hh = radius · Q`` (``Q``
    orthogonal, so every singular value, and the spectral radius, is ``radius``), plus inputs of
    size 1e-40 over ``LONG`` steps: the state stays tiny, so ``tanh' ≈ 1`` and BPTT is linear:
    ``dL/dx_t = (W_hh^T)^{T-1-t} dL/dx_{T-1}``, whose norm is exactly ``radius^{T-1-t}`` times the last one."""
    net = make_net(size, 3, hidden_size=size)
    rnn = net.encoder.layers[0][0]
    q, _ = np.linalg.qr(np.random.default_rng(6).standard_normal((size, size)))
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.eye(size))
        rnn.weight_hh_l0.copy_(radius * torch.from_numpy(q))
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    x = 1e-40 * torch.randn(1, LONG, size, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return net, x


def input_gradients(net: SequenceClassifierNet, x: torch.Tensor) -> torch.Tensor:
    """``dL/dx`` for ``L = CE(y, 0)`` with ``y = W_hy h_T + b_y``; parameter gradients are left in ``.grad``."""
    net.zero_grad()
    inputs = x.clone().requires_grad_(True)
    F.cross_entropy(net(inputs, torch.tensor([x.shape[1]])), torch.tensor([0])).backward()
    return inputs.grad[0]


def total_norm(params: list[nn.Parameter]) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None))


@pytest.mark.parametrize("radius", [0.5, 1.5])
def test_gradients_vanish_or_explode_as_the_spectral_radius_power(radius: float) -> None:
    """Over 200 steps in tanh's linear regime the gradient reaching the first input is ``radius^199``
    times the one at the last input: about 1e-60 (vanished) for radius 0.5 and about 1e35 (exploded)
    for radius 1.5, exactly as the product of Jacobians ``prod_t W_hh^T diag(1 - h_t^2)`` predicts."""
    net, x = linear_regime_rnn(radius)
    grad = input_gradients(net, x)
    ratio = float(grad[0].norm() / grad[-1].norm())
    assert ratio == pytest.approx(radius ** (LONG - 1), rel=1e-6)
    if radius < 1:
        assert ratio < 1e-6
    else:
        assert ratio > 1e30
        assert total_norm(list(net.parameters())) > 1e30  # the parameter gradients explode with it


def test_vanishing_with_saturating_inputs() -> None:
    """Outside the linear regime (ordinary random inputs and init, ``W_hh`` rescaled to spectral norm
    0.5) ``tanh' <= 1`` only shrinks the product further: the first input's gradient is < 1e-6 of the last's."""
    net = make_net(4, 3, hidden_size=8)
    rnn = net.encoder.layers[0][0]
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.5 / torch.linalg.matrix_norm(rnn.weight_hh_l0, ord=2))
    x = torch.randn(1, LONG, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    grad = input_gradients(net, x)
    assert float(grad[0].norm() / grad[-1].norm()) < 1e-6


def test_clip_grad_norm_tames_exploded_gradients() -> None:
    """``clip_grad_norm_(params, 1.0)`` returns the pre-clip total norm (here ~1e35), then rescales every
    gradient by the same factor, so the total norm is <= 1 and the update direction is unchanged."""
    net, x = linear_regime_rnn(1.5)
    input_gradients(net, x)
    params = list(net.parameters())
    before = [p.grad.clone() for p in params]
    norm = total_norm(params)
    assert norm > 1e30

    returned = torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)

    assert float(returned) == pytest.approx(norm, rel=1e-9)
    assert total_norm(params) <= 1.0 + 1e-6
    assert total_norm(params) == pytest.approx(1.0, rel=1e-6)
    for p, old in zip(params, before, strict=True):
        torch.testing.assert_close(p.grad, old / norm, rtol=1e-6, atol=1e-300)


class GradNorms(Callback):
    """Records each step's total gradient norm before clipping (``on_before_optimizer_step`` runs before
    Lightning clips) and after it (``on_train_batch_end``: the gradients the optimiser stepped on are
    still there, as the next step zeroes them)."""

    def __init__(self) -> None:
        self.before: list[float] = []
        self.after: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: object) -> None:
        self.before.append(total_norm(list(pl_module.parameters())))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        self.after.append(total_norm(list(pl_module.parameters())))


def test_rnn_classifier_logs_the_pre_clip_gradient_norm() -> None:
    """``RNNClassifier`` logs ``train/grad_norm``: the total 2-norm of the gradients *before* clipping
    (so explosions stay visible), while the optimiser steps on gradients clipped to ``gradient_clip_val``."""
    torch.manual_seed(0)
    model = RNNClassifier(input_size=4, num_classes=3, hidden_size=8, dropout=0.0, scheduler="none")
    with torch.no_grad():
        model.net.head.weight.mul_(50.0)  # large logits: a pre-clip gradient norm well above the clip value
    generator = torch.Generator().manual_seed(9)
    lengths = torch.tensor([5, 3, 4], dtype=torch.int64)
    batches = [
        (torch.randn(3, 5, 4, generator=generator), lengths, torch.randint(0, 3, (3,), generator=generator))
        for _ in range(2)
    ]
    norms = GradNorms()
    trainer = pl.Trainer(
        max_steps=2,
        gradient_clip_val=1.0,
        log_every_n_steps=1,  # the norm is computed on the steps the logger writes
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[norms],
    )
    trainer.fit(model, DataLoader(batches, batch_size=None))

    logged = float(trainer.logged_metrics["train/grad_norm"])
    assert logged > 0
    assert len(norms.before) == len(norms.after) == 2
    assert logged == pytest.approx(norms.before[-1], rel=1e-5)  # the last step's pre-clip norm
    assert all(before > 1.0 for before in norms.before)  # so clipping was active on both steps
    for after in norms.after:
        assert after <= 1.0 + 1e-5
        assert after == pytest.approx(1.0, rel=1e-4)
