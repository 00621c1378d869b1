"""Reproducibility, resuming, and precision on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pytorch_lightning import Callback

from speechrnn import RNNClassifier
from speechrnn.fit import main
from tests.test_cli import fit_args, report_accuracy


def metrics_of(root: Path, version: int) -> dict[str, float]:
    return json.loads((root / "lightning_logs" / f"version_{version}" / "test_metrics.json").read_text())["metrics"]


def test_same_seed_gives_identical_metrics(tiny_corpus: Path, tmp_path: Path) -> None:
    args = fit_args(tiny_corpus, tmp_path, "--trainer.max_epochs", "2", "--model.dropout", "0.3")
    main(args)
    main(args)
    assert metrics_of(tmp_path / "runs", 0) == metrics_of(tmp_path / "runs", 1)


class StopAfterEpochs(Callback):
    """Interrupts a run cleanly after ``epochs`` epochs, as a crash or a time limit would."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_resume_from_last_matches_an_uninterrupted_run(tiny_corpus: Path, tmp_path: Path) -> None:
    common = ("--model.dropout", "0.3", "--early_stopping.patience", "100", "--trainer.max_epochs", "3")
    interrupt = '[{"class_path": "tests.models.test_training.StopAfterEpochs", "init_args": {"epochs": 2}}]'
    main(fit_args(tiny_corpus, tmp_path / "a", *common))
    main(fit_args(tiny_corpus, tmp_path / "b", *common, "--trainer.callbacks", interrupt))
    stopped = torch.load(tmp_path / "b/runs/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=False)
    assert stopped["epoch"] == 1
    main(fit_args(tiny_corpus, tmp_path / "b", *common, "--ckpt_path", "last"))
    a = torch.load(tmp_path / "a/runs/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "b/runs/lightning_logs/version_1/checkpoints/last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]


def test_bf16_autocast_runs_on_cpu() -> None:
    model = RNNClassifier(input_size=6, num_classes=3, hidden_size=8, cell="gru")
    features = torch.randn(2, 5, 6)
    lengths = torch.tensor([5, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(features, lengths)
    assert logits.shape == (2, 3) and torch.isfinite(logits.float()).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("packed", ["false", "true"])
def test_mixed_precision_fit_on_gpu(tiny_corpus: Path, tmp_path: Path, precision: str, packed: str) -> None:
    metrics = main(
        fit_args(tiny_corpus, tmp_path, "--trainer.max_epochs", "2", "--trainer.accelerator", "gpu",
                 "--trainer.precision", precision, "--model.packed", packed)
    )  # fmt: skip
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert metrics["test/acc"] == pytest.approx(report_accuracy(run), abs=1e-6)


def test_confusion_scores_equal_torchmetrics_accuracy_and_macro_f1() -> None:
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

    from speechrnn.models.classifier import confusion_scores

    generator = torch.Generator().manual_seed(0)
    for classes, count in ((5, 40), (7, 9), (3, 1)):  # 7 classes in 9 examples: some never seen
        logits = torch.randn(count, classes, generator=generator)
        targets = torch.randint(0, max(2, classes - 2), (count,), generator=generator)
        matrix = MulticlassConfusionMatrix(classes)(logits, targets)
        scores = confusion_scores(matrix)
        accuracy = MulticlassAccuracy(classes, average="micro")(logits, targets)
        f1 = MulticlassF1Score(classes, average="macro")(logits, targets)
        assert torch.allclose(scores["acc"], accuracy) and torch.allclose(scores["f1"], f1, atol=1e-6), classes


def test_training_logs_the_loss_at_the_logging_interval_and_the_epoch_mean(tiny_corpus: Path, tmp_path: Path) -> None:
    """The per-step loss is read only on the steps the logger writes (the mean since the previous
    one), the epoch loss and metrics once an epoch: the other steps never wait for the device."""
    logged: list[tuple[int, set[str]]] = []

    class Spy(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            logged.append((trainer.global_step, {k for k in trainer.callback_metrics if k.startswith("train/")}))

    steps, sizes = [], []

    class Losses(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            steps.append(float(outputs["loss"]))
            sizes.append(len(batch[0]))

    args = [*fit_args(tiny_corpus, tmp_path), "--trainer.max_epochs=1", "--trainer.log_every_n_steps=2"]
    from speechrnn.cli import SpeechRNNCLI
    from speechrnn.data.splits import SPLITS

    cli = SpeechRNNCLI(args=args, run=False)
    cli.trainer.callbacks.extend([Spy(), Losses()])
    cli.datamodule.required_splits = SPLITS
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    first_logged = next(step for step, keys in logged if "train/loss_step" in keys)
    assert first_logged == 2  # global step after the second optimiser step
    metrics = cli.trainer.logged_metrics
    assert {"train/loss_epoch", "train/acc", "train/f1", "val/loss", "val/acc", "val/f1"} <= set(metrics)
    expected = sum(loss * size for loss, size in zip(steps, sizes, strict=True)) / sum(sizes)
    assert float(metrics["train/loss_epoch"]) == pytest.approx(expected, rel=1e-5)


def test_lengths_and_clip_indices_stay_on_the_cpu_when_a_batch_moves() -> None:
    """Both are read on the host every step (packing; speaker statistics and records by index): on a
    GPU, reading them back would wait for the device."""
    model = RNNClassifier(input_size=3, num_classes=2, hidden_size=4)
    batch = (torch.zeros(2, 5, 3), torch.tensor([5, 3]), torch.tensor([0, 1]), torch.tensor([7, 9]))
    features, lengths, targets, indices = model.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert features.device.type == targets.device.type == "meta"
    assert lengths.device.type == indices.device.type == "cpu" and indices.tolist() == [7, 9]
    features, lengths = model.transfer_batch_to_device(batch[:2], torch.device("meta"), 0)
    assert features.device.type == "meta" and lengths.device.type == "cpu"
