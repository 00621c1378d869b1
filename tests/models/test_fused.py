"""The fused CPU recurrences equal ``nn.RNN`` (tanh) and ``nn.GRU`` in value and gradient, and the
encoder uses them only where they apply (training on the CPU, unpacked, no carried state)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from speechrnn.models import RecurrentEncoder, SequenceClassifierNet
from speechrnn.models.fused import FUSED_FUNCTIONS, SCRATCH, FusedGRUFunction, fused_recurrence, release_scratch

TIGHT = {"rtol": 1e-10, "atol": 1e-10}


MODULES = {"rnn": nn.RNN, "gru": nn.GRU}
GATES = {"rnn": 1, "gru": 3}


def make_cells(cell: str, directions: int, inputs: int, hidden: int, seed: int = 0) -> list[nn.RNNBase]:
    torch.manual_seed(seed)
    cells = [MODULES[cell](inputs, hidden, batch_first=True).double() for _ in range(directions)]
    with torch.no_grad():  # biases away from zero so every bias gradient is exercised
        for cell in cells:
            cell.bias_ih_l0.uniform_(-1, 1)
            cell.bias_hh_l0.uniform_(-1, 1)
    return cells


@pytest.mark.parametrize("cell", ["rnn", "gru"])
@pytest.mark.parametrize("directions", [1, 2])
def test_values_and_every_gradient_match_pytorch(cell: str, directions: int) -> None:
    steps, batch, inputs, hidden = 9, 3, 5, 4
    cells = make_cells(cell, directions, inputs, hidden)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(directions, steps, batch, inputs, dtype=torch.float64, generator=generator, requires_grad=True)
    upstream = torch.randn(directions, steps, batch, hidden, dtype=torch.float64, generator=generator)

    reference = torch.stack([cell(x[d].transpose(0, 1))[0].transpose(0, 1) for d, cell in enumerate(cells)])
    expected = torch.autograd.grad((reference * upstream).sum(), [x, *[p for c in cells for p in c.parameters()]])
    fused = fused_recurrence(x, cells)
    got = torch.autograd.grad((fused * upstream).sum(), [x, *[p for c in cells for p in c.parameters()]])

    torch.testing.assert_close(fused, reference, **TIGHT)
    assert len(got) == 1 + 4 * directions
    for ours, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(ours, theirs, **TIGHT)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_gradcheck_against_finite_differences(cell: str) -> None:
    generator = torch.Generator().manual_seed(2)
    gates = 2 * GATES[cell]  # hidden size 2
    x, w_ih, w_hh, b_ih, b_hh = (
        torch.randn(*shape, dtype=torch.float64, generator=generator, requires_grad=True)
        for shape in [(2, 4, 2, 3), (2, gates, 3), (2, gates, 2), (2, gates), (2, gates)]
    )
    assert torch.autograd.gradcheck(FUSED_FUNCTIONS[cell].apply, (x, w_ih, w_hh, b_ih, b_hh))


def test_a_relu_rnn_is_refused() -> None:
    cells = [nn.RNN(3, 2, nonlinearity="relu")]
    with pytest.raises(ValueError, match="tanh"):
        fused_recurrence(torch.zeros(1, 2, 1, 3), cells)


def ragged(batch: int = 4, steps: int = 7, features: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, steps, features, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lengths = torch.tensor([5, steps, 1, 3])[:batch]
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    return torch.where(mask.unsqueeze(-1), x, 9.0), lengths  # finite junk in the padding


def graph_has_fused(function) -> bool:
    """Whether a fused function is anywhere in the autograd graph behind ``function``."""
    seen, stack = set(), [function]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "Fused" in type(node).__name__:
            return True
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return False


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cell", ["rnn", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_encoder_fused_and_pytorch_paths_agree_in_value_and_gradient(
    cell: str, bidirectional: bool, dtype: torch.dtype
) -> None:
    """Against ``nn.RNN``/``nn.GRU``: to 1e-10 in float64, to float32 rounding in float32 (the
    default training precision)."""
    torch.manual_seed(0)
    encoder = RecurrentEncoder(5, 4, num_layers=2, cell=cell, bidirectional=bidirectional).to(dtype)
    x, lengths = ragged()
    x = x.to(dtype)
    upstream = torch.randn(4, 7, encoder.output_size, dtype=dtype, generator=torch.Generator().manual_seed(4))
    tolerance = TIGHT if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}

    results = {}
    for fused in (False, True):
        encoder.fused = "auto" if fused else "off"
        inputs = x.clone().requires_grad_(True)
        outputs, _ = encoder(inputs, lengths)
        grads = torch.autograd.grad((outputs * upstream).sum(), [inputs, *encoder.parameters()])
        results[fused] = (outputs, grads, outputs.grad_fn)

    torch.testing.assert_close(results[True][0], results[False][0], **tolerance)
    for ours, theirs in zip(results[True][1], results[False][1], strict=True):
        torch.testing.assert_close(ours, theirs, **tolerance)
    assert torch.all(results[True][0][2, 1:] == 0)  # padding zeroed, as on the other path

    assert graph_has_fused(results[True][2]) and not graph_has_fused(results[False][2])


def test_a_forward_hook_on_an_inner_cell_is_honoured() -> None:
    """The fused path would bypass an inner module's hooks (pruning, weight norm, activation
    capture): with one registered, the encoder runs the modules themselves."""
    torch.manual_seed(0)
    encoder = RecurrentEncoder(5, 4, num_layers=2, cell="gru", bidirectional=True)
    x, lengths = ragged()
    x = x.float()
    expected, _ = encoder(x, lengths)
    seen = []
    handle = encoder.layers[1][0].register_forward_hook(lambda module, args, output: seen.append(output[0].shape))
    try:
        outputs, _ = encoder(x, lengths)
    finally:
        handle.remove()
    assert seen == [torch.Size([4, 7, 4])]
    assert not graph_has_fused(outputs.grad_fn)
    torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-6)
    assert graph_has_fused(encoder(x, lengths)[0].grad_fn)  # and fused again once it is removed


def test_fused_option_is_checked_and_its_scratch_pool_can_be_released() -> None:
    with pytest.raises(ValueError, match="fused must be 'auto' or 'off'"):
        RecurrentEncoder(5, 4, fused="on")  # type: ignore[arg-type]
    encoder = RecurrentEncoder(5, 64, num_layers=2, cell="gru")
    encoder(torch.randn(8, 50, 5), torch.full((8,), 50))[0].sum().backward()
    assert SCRATCH.kept_bytes > 0
    release_scratch()
    assert SCRATCH.kept_bytes == 0


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_training_gradients_of_a_padded_batch_equal_the_sum_over_sequences_alone(cell: str) -> None:
    """Backpropagation through the fused path is exact under padding: the batch's summed loss has
    the parameter gradients of each sequence's loss computed on its own, added up."""
    torch.manual_seed(0)
    net = SequenceClassifierNet(5, 3, cell, hidden_size=4, num_layers=2, bidirectional=True).double()
    x, lengths = ragged()
    labels = torch.tensor([0, 2, 1, 2])

    def grads(features: torch.Tensor, lens: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        loss = nn.functional.cross_entropy(net(features, lens), targets, reduction="sum")
        return list(torch.autograd.grad(loss, list(net.parameters())))

    batched = grads(x, lengths, labels)
    alone = [grads(x[i : i + 1, : int(n)], lengths[i : i + 1], labels[i : i + 1]) for i, n in enumerate(lengths)]
    for index, total in enumerate(batched):
        torch.testing.assert_close(total, sum(each[index] for each in alone), **TIGHT)


def test_fused_path_is_left_where_it_does_not_apply() -> None:
    lstm = RecurrentEncoder(5, 4, num_layers=1, cell="lstm", bidirectional=False).double()
    assert not graph_has_fused(lstm(*ragged())[0].grad_fn)  # LSTMs keep oneDNN's kernel
    encoder = RecurrentEncoder(5, 4, num_layers=1, cell="gru", bidirectional=False)
    x, lengths = ragged()
    x = x.float()
    calls = []
    original = FusedGRUFunction.apply
    FusedGRUFunction.apply = lambda *args: calls.append(1) or original(*args)
    try:
        encoder(x, lengths)
        assert len(calls) == 1
        with torch.no_grad():
            encoder(x, lengths)  # inference: nn.GRU
        encoder(x, lengths, return_states=True)  # states: nn.GRU
        encoder.requires_grad_(False)
        encoder(x, lengths)  # nothing to differentiate: nn.GRU
        encoder.requires_grad_(True)
        encoder.packed = True
        encoder(x, lengths)
        assert len(calls) == 1
    finally:
        FusedGRUFunction.apply = original


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_scratch_buffers_reused_across_steps_of_different_lengths_stay_exact(cell: str) -> None:
    cells = make_cells(cell, 2, 5, 4)
    parameters = [p for c in cells for p in c.parameters()]
    for steps in (9, 4, 12, 9):
        x = torch.randn(2, steps, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(steps))
        reference = torch.stack([cell(x[d].transpose(0, 1))[0].transpose(0, 1) for d, cell in enumerate(cells)])
        expected = torch.autograd.grad(reference.square().sum(), parameters)
        got = torch.autograd.grad(fused_recurrence(x, cells).square().sum(), parameters)
        for ours, theirs in zip(got, expected, strict=True):
            torch.testing.assert_close(ours, theirs, **TIGHT)
    assert SCRATCH._free, "the scratch buffers were not kept for the next step"


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_a_retained_graph_backpropagates_twice_to_the_same_gradients(cell: str) -> None:
    cells = make_cells(cell, 2, 5, 4)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    loss = fused_recurrence(x, cells).square().sum()
    first = torch.autograd.grad(loss, list(cells[0].parameters()), retain_graph=True)
    fused_recurrence(x * 2, cells).sum().backward()  # another step in between takes the scratch buffers
    second = torch.autograd.grad(loss, list(cells[0].parameters()))
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_frozen_weights_get_no_gradient_and_the_input_gradient_is_unchanged(cell: str) -> None:
    cells = make_cells(cell, 2, 5, 4)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    (expected,) = torch.autograd.grad(fused_recurrence(x, cells).square().sum(), [x])
    for cell in cells:
        cell.requires_grad_(False)
    fused_recurrence(x, cells).square().sum().backward()
    torch.testing.assert_close(x.grad, expected, **TIGHT)
    assert all(p.grad is None for c in cells for p in c.parameters())


def test_encoder_drops_between_layers_on_the_fused_path_only_in_training_mode() -> None:
    torch.manual_seed(0)
    encoder = RecurrentEncoder(5, 4, num_layers=2, cell="gru", bidirectional=True, dropout=0.5)
    x, lengths = ragged()
    x = x.float().requires_grad_(True)
    outputs = [encoder(x, lengths)[0] for _ in range(2)]
    assert all(graph_has_fused(out.grad_fn) for out in outputs)
    assert not torch.allclose(outputs[0], outputs[1])  # a fresh mask each call
    encoder.eval()  # eval mode with gradients on (attribution, adaptation): fused, and no dropout
    fused, _ = encoder(x, lengths)
    encoder.fused = "off"
    plain, _ = encoder(x, lengths)
    assert graph_has_fused(fused.grad_fn)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
