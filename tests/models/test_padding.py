"""A padded batch gives the same outputs as each sequence alone, for every cell, direction, pooling
and both the exact padded path and the packed path."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch

from speechrnn.models import RecurrentEncoder, SequenceClassifierNet, reverse_within_length
from speechrnn.models.pooling import POOLINGS

LENGTHS = torch.tensor([7, 3, 5, 1], dtype=torch.int64)


def padded_batch(feature_dim: int = 6, garbage: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(len(LENGTHS), int(LENGTHS.max()), feature_dim, generator=generator)
    mask = torch.arange(x.shape[1])[None, :] < LENGTHS[:, None]
    return torch.where(mask.unsqueeze(-1), x, garbage), LENGTHS


@pytest.mark.parametrize(
    "cell,bidirectional,pooling,packed",
    list(itertools.product(["rnn", "gru", "lstm"], [False, True], POOLINGS, [False, True])),
)
def test_padded_batch_matches_each_sequence_alone(cell: str, bidirectional: bool, pooling: str, packed: bool) -> None:
    torch.manual_seed(0)
    net = SequenceClassifierNet(
        6,
        4,
        cell,
        hidden_size=8,
        num_layers=2,
        bidirectional=bidirectional,
        pooling=pooling,
        packed=packed,
        input_norm=True,
    ).eval()
    x, lengths = padded_batch(garbage=123.0)  # padding content must not matter either
    with torch.no_grad():
        batched = net(x, lengths)
        for row, length in enumerate(lengths.tolist()):
            alone = net(x[row : row + 1, :length], lengths[row : row + 1])
            torch.testing.assert_close(batched[row : row + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_padded_and_packed_paths_agree_and_zero_the_padding(cell: str) -> None:
    torch.manual_seed(0)
    encoder = RecurrentEncoder(6, 8, num_layers=2, cell=cell, bidirectional=True)
    x, lengths = padded_batch()
    padded, _ = encoder(x, lengths)
    encoder.packed = True
    packed, _ = encoder(x, lengths)
    torch.testing.assert_close(padded, packed, rtol=1e-5, atol=1e-5)
    assert padded.shape == (4, 7, 16)
    assert torch.all(padded[1, 3:] == 0)


def test_bidirectional_matches_pytorch_bidirectional_layer() -> None:
    torch.manual_seed(0)
    encoder = RecurrentEncoder(6, 8, num_layers=1, cell="gru", bidirectional=True)
    reference = torch.nn.GRU(6, 8, batch_first=True, bidirectional=True)
    forward, backward = encoder.layers[0]
    with torch.no_grad():
        for name, value in forward.named_parameters():
            getattr(reference, name).copy_(value)
        for name, value in backward.named_parameters():
            getattr(reference, f"{name}_reverse").copy_(value)
    x = torch.randn(1, 5, 6)
    ours, _ = encoder(x, torch.tensor([5]))
    theirs, _ = reference(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_reverse_within_length_keeps_padding_in_place_and_is_an_involution() -> None:
    x = torch.arange(8.0).view(2, 4, 1)
    lengths = torch.tensor([4, 2])
    reversed_ = reverse_within_length(x, lengths)
    assert reversed_[:, :, 0].tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]
    torch.testing.assert_close(reverse_within_length(reversed_, lengths), x)


def test_reverse_within_length_time_major_and_its_gradient() -> None:
    """Time-major input reverses as its batch-major transpose does (frames of any trailing shape),
    and the gradient is the upstream gradient reversed the same way."""
    x = torch.randn(3, 5, 2, 2, requires_grad=True)
    lengths = torch.tensor([5, 0, 3])
    batch_major = reverse_within_length(x, lengths)
    time_major = reverse_within_length(x.transpose(0, 1), lengths, time_dim=0)
    assert torch.equal(time_major.transpose(0, 1), batch_major)
    assert torch.equal(batch_major[2, 3:], x[2, 3:]) and torch.equal(batch_major[2, 0], x[2, 2])
    upstream = torch.randn_like(x)
    (gradient,) = torch.autograd.grad((batch_major * upstream).sum(), x)
    assert torch.equal(gradient, reverse_within_length(upstream, lengths))


def test_last_state_is_returned_for_ragged_batches() -> None:
    torch.manual_seed(0)
    for cell in ("gru", "lstm"):
        encoder = RecurrentEncoder(6, 8, num_layers=2, cell=cell, bidirectional=False)
        x, lengths = padded_batch()
        _, states = encoder(x, lengths, return_states=True)
        for row, length in enumerate(lengths.tolist()):
            _, alone = encoder(x[row : row + 1, :length], lengths[row : row + 1], return_states=True)
            for layer in range(2):
                ours = states[layer][0] if cell == "lstm" else states[layer]
                theirs = alone[layer][0] if cell == "lstm" else alone[layer]
                torch.testing.assert_close(ours[:, row], theirs[:, 0], rtol=1e-5, atol=1e-6)


def test_bidirectional_encoder_refuses_carried_state() -> None:
    encoder = RecurrentEncoder(6, 8, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        encoder(torch.zeros(1, 2, 6), torch.tensor([2]), states=[torch.zeros(1, 1, 8)] * 2)


@pytest.mark.slow
def test_forward_has_no_data_dependent_graph_break() -> None:
    """torch.compile must capture the whole classifier (no Python branch on the lengths' values).

    Runs in its own interpreter: dynamo leaves state behind (even after ``torch._dynamo.reset()``)
    that breaks a later ``torch.export`` in the same process."""
    script = """
import torch, torch._dynamo
from speechrnn.models import SequenceClassifierNet
torch._dynamo.config.allow_rnn = True
for cell in ("rnn", "gru", "lstm"):
    net = SequenceClassifierNet(5, 3, cell, 8, 2, True, pooling="mean")
    explanation = torch._dynamo.explain(net)(torch.randn(2, 7, 5), torch.tensor([7, 3]))
    print(cell, explanation.graph_break_count, explanation.break_reasons)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines()}
    assert counts == {"rnn": 0, "gru": 0, "lstm": 0}, result.stdout


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_whole_stack_kernel_equals_the_padded_path_on_full_length_batches(cell: str, bidirectional: bool) -> None:
    # The GPU runs full-length batches through the multi-layer kernel in one call (fused="auto");
    # on the CPU the same call must give the per-direction path's outputs and gradients.
    torch.manual_seed(0)
    encoder = RecurrentEncoder(6, 8, num_layers=3, cell=cell, bidirectional=bidirectional, dropout=0.3).eval()
    encoder.fused = "off"
    x = torch.randn(4, 7, 6, requires_grad=True)
    reference, _ = encoder(x, torch.full((4,), 7))
    reference.square().sum().backward()
    expected = [p.grad.clone() for p in [x, *encoder.parameters()]]
    x.grad = None
    encoder.zero_grad()
    stacked = encoder._forward_stack(x)
    stacked.square().sum().backward()
    torch.testing.assert_close(stacked, reference, rtol=1e-6, atol=1e-6)
    for got, want in zip([x.grad, *(p.grad for p in encoder.parameters())], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_lstm_forget_gates_start_open() -> None:
    encoder = RecurrentEncoder(6, 8, num_layers=2, cell="lstm", bidirectional=True)
    for directions in encoder.layers:
        for lstm in directions:  # PyTorch's gate order: input, forget, cell, output
            forget = lstm.bias_ih_l0[8:16] + lstm.bias_hh_l0[8:16]
            assert torch.equal(forget, torch.ones(8))
            assert not torch.equal(lstm.bias_ih_l0[:8], torch.zeros(8))  # the other gates keep PyTorch's init
