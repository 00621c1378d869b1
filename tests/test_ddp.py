"""Two-process CPU training (DDP over gloo): one cache, sharded batches, correctly reduced metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from speechrnn import RNNClassifier
from speechrnn.data import AudioFolderDataModule
from speechrnn.split_predictions import predict_split
from tests.test_cli import fit_args

pytestmark = pytest.mark.slow  # see the README: the fast lane leaves these out


def test_two_process_fit_matches_a_single_process_evaluation(tiny_corpus: Path, tmp_path: Path) -> None:
    args = fit_args(
        tiny_corpus, tmp_path, "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size", "4",
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    result = subprocess.run([sys.executable, "-m", "speechrnn.fit", *args], capture_output=True, text=True,
                            timeout=600, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    logged = json.loads((run / "test_metrics.json").read_text())
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1

    model = RNNClassifier.load_from_checkpoint(logged["checkpoint"], map_location="cpu")
    datamodule = AudioFolderDataModule(manifest=tiny_corpus, cache_dir=tmp_path / "cache", batch_size=4)
    targets, probabilities, *_ = predict_split(model, datamodule, "test")
    single = float((probabilities.argmax(1) == targets).mean())
    assert logged["metrics"]["test/acc"] == pytest.approx(single, abs=1e-6)
    report = json.loads((run / "report_test" / "report.json").read_text())
    assert report["examples"] == len(targets) == len(datamodule.splits["test"])
