"""Per-step tasks: one output per frame, with the loss and metrics over valid frames only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from speechrnn import RNNClassifier
from speechrnn.data.base import pad_targets
from speechrnn.data.corpora.sequences import SequenceDataModule, load_npz, save_npz
from speechrnn.errors import UserInputError
from speechrnn.fit import main
from speechrnn.padding import PADDED_CLASS

LENGTHS = [7, 3, 5]


def ragged_batch(task: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    features = [rng.standard_normal((n, 4)).astype(np.float32) for n in LENGTHS]
    if task == "frame_classification":
        targets = [rng.integers(0, 3, n) for n in LENGTHS]
    else:
        targets = [rng.standard_normal((n, 2)).astype(np.float32) for n in LENGTHS]
    width = max(LENGTHS)
    padded = np.full((len(LENGTHS), width, 4), 99.0, np.float32)  # junk in the padding must not matter
    for row, sequence in enumerate(features):
        padded[row, : len(sequence)] = sequence
    return torch.from_numpy(padded), torch.tensor(LENGTHS), pad_targets(targets, width), features


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("task", ["frame_classification", "frame_regression"])
def test_masked_per_step_loss_is_the_sum_over_valid_frames_and_padding_changes_no_output(
    task: str, bidirectional: bool
) -> None:
    torch.manual_seed(0)
    outputs = 3 if task == "frame_classification" else 2
    model = RNNClassifier(4, outputs, task=task, hidden_size=8, dropout=0.0, bidirectional=bidirectional).eval()
    x, lengths, targets, sequences = ragged_batch(task)
    if task == "frame_regression":  # padded target values must not count either
        targets = torch.where(torch.arange(x.shape[1])[None, :, None] < lengths[:, None, None], targets, 1e3)
    with torch.no_grad():
        batched = model(x, lengths)
        batch_loss = model.loss(batched, targets, lengths)
        total, count = 0.0, 0
        for row, sequence in enumerate(sequences):
            n = len(sequence)
            alone = model(torch.from_numpy(sequence)[None], torch.tensor([n]))
            torch.testing.assert_close(batched[row : row + 1, :n], alone, rtol=1e-5, atol=1e-5)
            loss = model.loss(alone, targets[row : row + 1, :n], torch.tensor([n]))
            units = n * (1 if task == "frame_classification" else outputs)  # MSE averages every value
            total, count = total + float(loss) * units, count + units
    assert batched.shape == (3, max(LENGTHS), outputs)
    assert float(batch_loss) == pytest.approx(total / count, rel=1e-5)


def test_pad_targets_pads_classes_with_the_ignored_index_and_values_with_zeros() -> None:
    classes = pad_targets([np.array([1, 2]), np.array([0])], 3)
    assert classes.tolist() == [[1, 2, PADDED_CLASS], [0, PADDED_CLASS, PADDED_CLASS]]
    values = pad_targets([np.ones((2, 2), np.float32), np.ones((1, 2), np.float32)], 2)
    assert values.shape == (2, 2, 2) and values[1, 1].tolist() == [0.0, 0.0]
    assert pad_targets([1, 0, 2], 5).tolist() == [1, 0, 2]


def test_npz_per_step_targets_round_trip_and_mismatches_are_named(tmp_path: Path) -> None:
    sequences = [np.zeros((n, 2), np.float32) for n in (3, 2)]
    targets = [np.array([0, 1, 1]), np.array([1, 0])]
    path = save_npz(tmp_path / "steps.npz", sequences, targets=targets)
    loaded = load_npz(path)
    assert [t.tolist() for t in loaded["targets"]] == [[0, 1, 1], [1, 0]]
    np.savez(tmp_path / "bad.npz", features=np.zeros((5, 2)), lengths=[3, 2], targets=np.zeros(4))
    with pytest.raises(UserInputError, match="targets has 4 steps but features has 5 frames"):
        load_npz(tmp_path / "bad.npz")
    short = [np.array([0, 1]), np.array([1, 0])]
    dm = SequenceDataModule.from_arrays(sequences, targets=short, task="frame_classification")
    with pytest.raises(ValueError, match="sequence 0: 2 targets for 3 frames"):
        dm.setup("fit")


def sign_runs(count: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Noisy sequences whose per-step class is whether the running sum of the first feature is positive
    (needs the recurrence), and whose per-step value is the running mean of that feature."""
    sequences, classes, values = [], [], []
    for _ in range(count):
        n = int(rng.integers(8, 20))
        x = rng.standard_normal((n, 3)).astype(np.float32)
        running = np.cumsum(x[:, 0])
        sequences.append(x)
        classes.append((running > 0).astype(np.int64))
        values.append((running / np.arange(1, n + 1)).astype(np.float32))
    return sequences, classes, values


@pytest.mark.slow
@pytest.mark.parametrize(
    "task,extra", [("frame_classification", []), ("frame_regression", []),
                   ("frame_classification", ["--model.tbptt_steps", "5"])],
)  # fmt: skip
def test_per_step_tasks_train_through_the_cli(task: str, extra: list[str], tmp_path: Path) -> None:
    sequences, classes, values = sign_runs(240, np.random.default_rng(1))
    targets = classes if task == "frame_classification" else values
    path = save_npz(tmp_path / "steps.npz", sequences, targets=targets)
    metrics = main([
        "--data", "SequenceDataModule", "--data.path", str(path), "--data.task", task, "--data.batch_size", "16",
        "--model.hidden_size", "32", "--model.bidirectional", "false", "--trainer.max_epochs", "12",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", *extra,
    ])  # fmt: skip
    if task == "frame_classification":
        assert metrics["test/acc"] >= 0.9  # the majority class is about 0.5
    else:
        variance = float(np.var(np.concatenate(values)))
        assert metrics["test/mse"] < 0.2 * variance, (metrics, variance)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_truncated_bptt_carries_the_state_and_cuts_only_the_gradient(cell: str) -> None:
    torch.manual_seed(0)
    model = RNNClassifier(
        4, 3, task="frame_classification", cell=cell, hidden_size=8, dropout=0.0, bidirectional=False, tbptt_steps=2
    ).train()
    x, lengths, targets, _ = ragged_batch("frame_classification")
    x = x.clone().requires_grad_(True)

    def run(outputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        loss = model.loss(outputs, targets, lengths)
        return loss, torch.autograd.grad(loss, [x, *model.parameters()])

    whole, whole_grads = run(model(x, lengths))
    covering, covering_grads = run(model.forward_truncated(x, lengths, steps=max(LENGTHS)))
    torch.testing.assert_close(covering, whole)  # one chunk covering the sequence: plain BPTT
    for got, want in zip(covering_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    truncated = model.forward_truncated(x, lengths, steps=2)
    valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    torch.testing.assert_close(truncated[valid], model(x, lengths)[valid], rtol=1e-5, atol=1e-5)  # same values
    (late,) = torch.autograd.grad(truncated[0, 6].sum(), [x])  # frame 6 lies in the fourth chunk
    assert late[0, :6].abs().sum() == 0 and late[0, 6].abs().sum() > 0  # nothing flows past its chunk


def test_truncated_bptt_needs_a_causal_per_step_model() -> None:
    with pytest.raises(ValueError, match="tbptt_steps"):
        RNNClassifier(4, 3, task="frame_classification", tbptt_steps=4)  # bidirectional by default
    with pytest.raises(ValueError, match="tbptt_steps"):
        RNNClassifier(4, 3, task="classification", bidirectional=False, tbptt_steps=4)
