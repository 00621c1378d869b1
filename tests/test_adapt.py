"""Self-training on a new voice's unlabelled recordings: pseudo-labels enter training only, the
rounds use the model's confident predictions, and the command writes a loadable adapted checkpoint
and its report without touching the original."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechrnn.adapt import AdaptSettings, self_train
from speechrnn.adapt import main as adapt
from speechrnn.data import AudioFolderDataModule
from speechrnn.errors import ConfigError
from speechrnn.features import FeatureSettings
from speechrnn.inference import split_probabilities
from speechrnn.models.classifier import RNNClassifier

SPEAKER = FeatureSettings(deltas=1, normalize="speaker")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from tests.conftest import fit_speaker_model

    return fit_speaker_model(tmp_path_factory.mktemp("adapt"), epochs=3)


def datamodule(manifest: Path, cache: Path) -> AudioFolderDataModule:
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=cache, features=SPEAKER, batch_size=8)
    dm.setup("fit")
    return dm


def test_pseudo_labels_join_the_training_split_only(trained) -> None:
    _, manifest, cache = trained
    dm = datamodule(manifest, cache)
    train, test = dm.splits["train"], dm.splits["test"]
    true = dm.targets()
    chosen = test[:3]
    wrong = (true[chosen] + 1) % len(dm.class_names)
    dm.pseudo_label(chosen, wrong)
    dataset = dm.dataset("train")
    assert len(dataset) == len(train) + 3
    seen = {}
    for _, _, targets, indices in dm.dataloader("train", shuffle=False):
        seen.update(zip(indices.tolist(), targets.tolist(), strict=True))
    assert sorted(seen) == sorted([*train.tolist(), *chosen.tolist()])
    assert [seen[int(i)] for i in chosen] == wrong.tolist()
    assert all(seen[int(i)] == true[i] for i in train)
    evaluated = {}
    for _, _, targets, indices in dm.dataloader("test", shuffle=False):
        evaluated.update(zip(indices.tolist(), targets.tolist(), strict=True))
    assert [evaluated[int(i)] for i in chosen] == true[chosen].tolist()
    dm.pseudo_label(None)
    assert len(dm.dataset("train")) == len(train)


def test_pseudo_labels_are_checked(trained) -> None:
    _, manifest, cache = trained
    dm = datamodule(manifest, cache)
    with pytest.raises(ValueError, match="training sequences, which have labels"):
        dm.pseudo_label(dm.splits["train"][:1], np.array([0]))
    with pytest.raises(ValueError, match="one label per index"):
        dm.pseudo_label(dm.splits["test"][:2], np.array([0]))
    with pytest.raises(ValueError, match="class indices below 3"):
        dm.pseudo_label(dm.splits["test"][:1], np.array([3]))


def test_each_round_trains_on_the_confident_predictions(trained) -> None:
    checkpoint, manifest, cache = trained
    dm = datamodule(manifest, cache)
    model = RNNClassifier.from_checkpoint(checkpoint)
    _, probabilities, _ = split_probabilities(model, dm, "test")
    threshold = float(np.median(probabilities.max(axis=1)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history, _ = self_train(model, dm, "test", AdaptSettings(rounds=2, threshold=threshold, epochs=1))
    assert [h["round"] for h in history] == [1, 2]
    assert history[0]["clips"] == len(dm.splits["test"])
    assert history[0]["pseudo_labelled"] == int((probabilities.max(axis=1) >= threshold).sum())
    assert history[0]["mean_confidence"] == pytest.approx(float(probabilities.max(axis=1).mean()), rel=1e-5)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(dm.dataset("train")) == len(dm.splits["train"])  # the labelled split is back
    assert model.hparams.scheduler == "none" and model.hparams.lr == AdaptSettings().lr


def test_adaptation_is_deterministic_under_a_seed(trained) -> None:
    checkpoint, manifest, cache = trained
    states = []
    for _ in range(2):
        model = RNNClassifier.from_checkpoint(checkpoint)
        self_train(model, datamodule(manifest, cache), "test", AdaptSettings(rounds=1, epochs=1), seed=3)
        states.append(model.state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


def test_adapt_command_writes_checkpoint_report_and_summary(trained, tmp_path: Path) -> None:
    checkpoint, _, cache = trained
    original = checkpoint.read_bytes()
    out = tmp_path / "adapted"
    result = adapt([
        "--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(out),
        "--adapt.rounds", "1", "--adapt.epochs", "1", "--adapt.threshold", "0.0",
    ])  # fmt: skip
    assert checkpoint.read_bytes() == original
    saved = json.loads((out / "adaptation.json").read_text())
    assert saved["rounds"][0]["pseudo_labelled"] == saved["rounds"][0]["clips"] > 0  # threshold 0 keeps all
    assert saved["settings"] == {"rounds": 1, "threshold": 0.0, "epochs": 1, "lr": 1e-3}
    report = json.loads((out / "report_test" / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(saved["accuracy_after"]) == pytest.approx(result["accuracy_after"])
    adapted = RNNClassifier.from_checkpoint(out / "adapted.ckpt")
    dm = datamodule(trained[1], cache)
    indices, probabilities, _ = split_probabilities(adapted, dm, "test")
    assert float((probabilities.argmax(1) == dm.targets()[indices]).mean()) == pytest.approx(saved["accuracy_after"])
    assert adapted.data_config["speaker_statistics"] is not None
    assert not list(out.glob(".*tmp"))


@pytest.mark.parametrize(
    "options,message",
    [(["--adapt.rounds", "0"], "adapt.rounds must be >= 1"),
     (["--adapt.threshold", "1.0"], r"adapt.threshold must be in \[0, 1\)"),
     (["--adapt.epochs", "0"], "adapt.epochs must be >= 1"),
     (["--adapt.lr", "0"], "adapt.lr must be > 0")],
)  # fmt: skip
def test_bad_settings_are_refused_before_any_work(trained, tmp_path: Path, options: list[str], message: str) -> None:
    checkpoint, _, cache = trained
    with pytest.raises(ConfigError, match=message):
        adapt(["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(tmp_path / "o"), *options])
    assert not (tmp_path / "o").exists()


def test_the_training_split_cannot_be_adapted_to(trained) -> None:
    checkpoint, _, cache = trained
    with pytest.raises(SystemExit):
        adapt(["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--split", "train"])
