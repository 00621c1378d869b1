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
