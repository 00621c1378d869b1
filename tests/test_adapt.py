"""Self-training on new voices' unlabelled recordings: pseudo-labels enter training only, the
rounds use the model's confident predictions, each voice is adapted from the same start, the
validation voices decide whether the adapted model is kept, a user's own recordings are adapted to
and reported file by file, and too little to adapt on is refused before any fine-tuning."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechrnn.adapt import AdaptSettings, build_parser, screen, self_train, subset_probabilities, validation_check
from speechrnn.adapt import main as adapt
from speechrnn.audio_io import AudioError
from speechrnn.cli import parse_with_run_data, trainer_defaults
from speechrnn.data import AudioFolderDataModule
from speechrnn.errors import ConfigError, run_entry_point
from speechrnn.features import FeatureSettings
from speechrnn.inference import Predictor
from speechrnn.models.classifier import RNNClassifier
from speechrnn.split_predictions import split_probabilities
from tests.conftest import CLASSES, chirp, write_corpus

SPEAKER = FeatureSettings(deltas=1, normalize="speaker")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from tests.conftest import fit_speaker_model

    return fit_speaker_model(tmp_path_factory.mktemp("adapt"), epochs=3)


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A model of 4 training speakers, right on all of its 2 validation voices; 2 test voices; 12
    clips a voice: ``(last.ckpt, manifest, cache folder)``."""
    from speechrnn.fit import main as fit

    root = tmp_path_factory.mktemp("voices")
    manifest = write_corpus(root / "corpus", speakers=8, per_class=4)
    fit([
        "--data", "AudioFolderDataModule", "--data.manifest", str(manifest), "--data.cache_dir", str(root / "cache"),
        "--data.features.normalize", "speaker", "--data.features.deltas", "1", "--data.batch_size", "8",
        "--data.val_fraction", "0.25", "--data.test_fraction", "0.25",
        "--model.hidden_size", "8", "--model.num_layers", "1", "--model.lr", "0.02", "--trainer.max_epochs", "6",
        "--trainer.default_root_dir", str(root / "runs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    return next((root / "runs").rglob("last.ckpt")), manifest, root / "cache"


def datamodule(manifest: Path, cache: Path) -> AudioFolderDataModule:
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=cache, features=SPEAKER, batch_size=8)
    dm.setup("fit")
    return dm


def run_data(checkpoint: Path, cache: Path) -> AudioFolderDataModule:
    """The DataModule that ``python -m speechrnn.adapt --ckpt checkpoint`` builds from the run config."""
    parser = build_parser()
    config = parse_with_run_data(parser, ["--ckpt", str(checkpoint), "--data.cache_dir", str(cache)])
    dm = parser.instantiate_classes(config).data
    dm.setup("fit")
    return dm


def record_voice(folder: Path, clips: int, pitch: float, seed: int) -> Path:
    """``clips`` chirps of one new voice (every class in turn, pitch scaled by ``pitch``), half of
    them in a subfolder, and a text file that is not audio."""
    rng = np.random.default_rng(seed)
    for n in range(clips):
        kind = CLASSES[n % len(CLASSES)]
        where = folder / "more" if n % 2 else folder
        where.mkdir(parents=True, exist_ok=True)
        sf.write(where / f"{kind}_{n}.wav", chirp(kind, rng.uniform(0.2, 0.4), 16000, rng), round(16000 * pitch))
    (folder / "notes.txt").write_text("not audio")
    return folder


def same_weights(a: RNNClassifier, b: RNNClassifier) -> bool:
    other = b.state_dict()
    return all(torch.equal(value, other[key]) for key, value in a.state_dict().items())


def accuracy_of(model: RNNClassifier, dm, indices: np.ndarray) -> float:
    used, probabilities = subset_probabilities(model, dm, indices)
    return float((probabilities.argmax(1) == dm.targets()[used]).mean())


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
    history, trainer = self_train(model, dm, "test", AdaptSettings(rounds=2, threshold=threshold, epochs=1))
    shared = trainer_defaults("cpu")  # the settings fit's Trainer has
    assert trainer.gradient_clip_val == shared["gradient_clip_val"] and trainer.precision == shared["precision"]
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


QUICK = ["--adapt.rounds", "1", "--adapt.epochs", "1", "--adapt.threshold", "0.0", "--adapt.min_clips", "5"]


def test_one_voice_is_adapted_as_self_training_adapts_the_split(trained, tmp_path: Path, capsys) -> None:
    checkpoint, manifest, cache = trained
    original = checkpoint.read_bytes()
    out = tmp_path / "adapted"
    result = adapt([
        "--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(out), *QUICK,
        "--adapt.check_validation", "false",
    ])  # fmt: skip
    assert checkpoint.read_bytes() == original
    saved = json.loads((out / "adaptation.json").read_text())
    assert saved["rounds"][0]["pseudo_labelled"] == saved["rounds"][0]["clips"] > 0  # threshold 0 keeps all
    assert saved["settings"] == {
        "rounds": 1, "threshold": 0.0, "epochs": 1, "lr": 1e-3, "min_clips": 5, "per_voice": True,
        "check_validation": False,
    }  # fmt: skip
    assert saved["adapted"] == "one voice" and saved["decision"] == "adapted"
    assert saved["validation"] == {"checked": False, "reason": "adapt.check_validation is false"}
    assert saved["adapted_checkpoint"] == str(out / "adapted.ckpt") and not (out / "voices").exists()
    report = json.loads((out / "report_test" / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(saved["accuracy_after"]) == pytest.approx(result["accuracy_after"])
    adapted = RNNClassifier.from_checkpoint(out / "adapted.ckpt")
    dm = run_data(checkpoint, cache)
    indices, probabilities, _ = split_probabilities(adapted, dm, "test")
    assert float((probabilities.argmax(1) == dm.targets()[indices]).mean()) == pytest.approx(saved["accuracy_after"])
    assert adapted.data_config["speaker_statistics"] is not None
    assert not list(out.glob(".*tmp"))
    by_hand = RNNClassifier.from_checkpoint(checkpoint)  # the call sequence the command always made
    self_train(by_hand, dm, "test", AdaptSettings(rounds=1, epochs=1, threshold=0.0))
    assert same_weights(by_hand, adapted)
    printed = capsys.readouterr().out
    assert "adaptation not checked on validation voices: adapt.check_validation is false" in printed
    assert f"test: accuracy {saved['accuracy_before']:.4f} before, {saved['accuracy_after']:.4f} after" in printed


def test_the_validation_check_scores_adaptation_and_changes_nothing(trained) -> None:
    checkpoint, _, cache = trained
    dm = run_data(checkpoint, cache)
    settings = AdaptSettings(rounds=1, epochs=1, threshold=0.0, min_clips=5)
    model, fresh = RNNClassifier.from_checkpoint(checkpoint), RNNClassifier.from_checkpoint(checkpoint)
    check = validation_check(model, dm, settings, "test")
    assert same_weights(model, fresh) and model.hparams.lr == fresh.hparams.lr
    val = dm.splits["val"]
    voice = {dm.record_of(int(i)).speaker for i in val}
    assert check["checked"] and check["voices"] == sorted(voice) and check["clips"] == len(val)
    assert check["accuracy_before"] == pytest.approx(accuracy_of(fresh, dm, val))
    on_val = RNNClassifier.from_checkpoint(checkpoint)
    self_train(on_val, dm, "val", settings)
    assert check["accuracy_after"] == pytest.approx(accuracy_of(on_val, dm, val))
    assert check["helped"] == (check["accuracy_after"] > check["accuracy_before"])
    self_train(model, dm, "test", settings)  # after the check: the same numbers as without it
    self_train(fresh, dm, "test", settings)
    assert same_weights(model, fresh)


def test_adaptation_that_does_not_help_the_validation_voices_is_not_kept(voices, tmp_path: Path, capsys) -> None:
    checkpoint, _, cache = voices
    out = tmp_path / "kept"
    result = adapt(["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(out), *QUICK])
    saved = json.loads((out / "adaptation.json").read_text())
    check = saved["validation"]
    assert check["checked"] and check["accuracy_before"] == 1.0  # nothing left to gain on them
    assert not check["helped"] and check["accuracy_after"] <= check["accuracy_before"] and check["clips"] == 24
    line = (
        f"adaptation did not help on the validation voices ({100 * check['accuracy_before']:.1f} % -> "
        f"{100 * check['accuracy_after']:.1f} %): keeping the unadapted model"
    )
    assert line in capsys.readouterr().out.splitlines()
    assert saved["decision"] == "kept the unadapted model" and saved["adapted_checkpoint"] is None
    assert saved["rounds"] == [] and not (out / "adapted.ckpt").exists() and not (out / "voices").exists()
    dm = run_data(checkpoint, cache)
    unadapted = accuracy_of(RNNClassifier.from_checkpoint(checkpoint), dm, dm.splits["test"])
    report = json.loads((out / "report_test" / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(unadapted) == pytest.approx(result["accuracy_after"])
    assert result["accuracy_before"] == pytest.approx(unadapted) and report["model"] == "unadapted"


def test_without_speaker_disjoint_validation_it_says_so_and_adapts(trained, tmp_path: Path, capsys) -> None:
    checkpoint, _, cache = trained
    out = tmp_path / "unchecked"
    adapt(["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--data.val_fraction", "0", "--out", str(out),
           *QUICK])  # fmt: skip
    saved = json.loads((out / "adaptation.json").read_text())
    assert saved["validation"] == {"checked": False, "reason": "the data has no validation split"}
    assert "adaptation not checked on validation voices: the data has no validation split" in capsys.readouterr().out
    assert saved["decision"] == "adapted" and (out / "adapted.ckpt").is_file()


def test_each_voice_is_adapted_on_its_own_from_the_same_start(voices, tmp_path: Path) -> None:
    checkpoint, _, cache = voices
    out = tmp_path / "per-voice"
    adapt(["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(out), *QUICK,
           "--adapt.check_validation", "false"])  # fmt: skip
    saved = json.loads((out / "adaptation.json").read_text())
    index = json.loads((out / "voices" / "index.json").read_text())
    dm = run_data(checkpoint, cache)
    test = dm.splits["test"]
    speakers = np.array([dm.record_of(int(i)).speaker for i in test])
    names = sorted(set(speakers))
    assert len(names) == 2 and sorted(index["voices"]) == names and index["unadapted"] == {}
    assert saved["adapted"] == "each of 2 voices on its own" and saved["adapted_checkpoint"] is None
    assert not (out / "adapted.ckpt").exists()
    assert [r["clips"] for r in saved["rounds"]] == [len(test)]
    correct = 0
    for name in names:
        clips = test[speakers == name]
        model = RNNClassifier.from_checkpoint(out / "voices" / index["voices"][name]["checkpoint"])
        by_hand = RNNClassifier.from_checkpoint(checkpoint)
        self_train(by_hand, dm, "test", AdaptSettings(rounds=1, epochs=1, threshold=0.0), indices=clips)
        assert same_weights(by_hand, model), name  # from the unadapted model, not from the other voice's
        voice_accuracy = accuracy_of(model, dm, clips)
        assert index["voices"][name]["accuracy_after"] == pytest.approx(voice_accuracy)
        correct += round(voice_accuracy * len(clips))
    report = json.loads((out / "report_test" / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(correct / len(test)) == pytest.approx(saved["accuracy_after"])
    assert {v["voice"]: v["accuracy_after"] for v in saved["voices"]} == pytest.approx(
        {n: index["voices"][n]["accuracy_after"] for n in names}
    )


def test_per_voice_false_adapts_the_whole_split_at_once(voices, tmp_path: Path) -> None:
    checkpoint, _, cache = voices
    out = tmp_path / "at-once"
    adapt(["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(out), *QUICK,
           "--adapt.check_validation", "false", "--adapt.per_voice", "false"])  # fmt: skip
    saved = json.loads((out / "adaptation.json").read_text())
    assert saved["adapted"] == "all clips at once (adapt.per_voice false)"
    assert (out / "adapted.ckpt").is_file() and not (out / "voices").exists()


def test_voices_too_small_to_adapt_are_named() -> None:
    voices = {"a": np.arange(3), "b": np.arange(3, 15), "c": np.arange(15, 27)}
    confidence = {i: 0.9 for i in range(15)} | {i: 0.5 for i in range(15, 27)}
    reasons = screen(voices, confidence, AdaptSettings(min_clips=10, threshold=0.7))
    assert reasons == {
        "a": "3 clip(s), fewer than adapt.min_clips=10",
        "b": None,
        "c": "none of its 12 clip(s) reaches adapt.threshold=0.7",
    }


def test_a_split_with_nothing_to_adapt_to_is_refused(voices, tmp_path: Path) -> None:
    checkpoint, _, cache = voices
    with pytest.raises(ConfigError, match=r"nothing to adapt to in the test split: spk\d: 12 clip\(s\), fewer than "
                       r"adapt.min_clips=13; spk\d: 12 clip"):  # fmt: skip
        adapt(["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(tmp_path / "o"),
               "--adapt.min_clips", "13"])  # fmt: skip
    assert not (tmp_path / "o").exists()


def predictions(predictor: Predictor, files: list[str]) -> list[tuple[str, float]]:
    """Label and probability of each file, its voice normalised by the statistics of all of them."""
    statistics, _ = predictor.speaker_statistics(files)
    return [next(iter(predictor.predict_file(f, statistics).items())) for f in files]


def test_own_recordings_are_adapted_to_and_reported_file_by_file(voices, tmp_path: Path, capsys) -> None:
    checkpoint, _, cache = voices
    original = checkpoint.read_bytes()
    her = record_voice(tmp_path / "her", 12, 1.25, seed=5)
    out = tmp_path / "mine"
    result = adapt([
        "--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(out), str(her),
        "--adapt.rounds", "2", "--adapt.threshold", "0.0", "--adapt.min_clips", "5",
        "--adapt.check_validation", "false",
    ])  # fmt: skip
    assert checkpoint.read_bytes() == original
    saved = json.loads((out / "adaptation.json").read_text())
    assert saved == result
    files = [f["path"] for f in saved["files"]]
    assert sorted(files) == sorted(str(p.resolve()) for p in her.rglob("*.wav")) and len(files) == 12
    assert saved["accuracy"] == "not reported: the recordings have no labels"
    assert [r["pseudo_labelled"] for r in saved["rounds"]] == [12, 12]
    assert saved["adapted_checkpoint"] == str(out / "adapted.ckpt") and saved["voices"][0]["voice"] == str(her)
    before = predictions(Predictor.from_checkpoint(checkpoint), files)  # the deployable front end agrees
    after = predictions(Predictor.from_checkpoint(out / "adapted.ckpt"), files)
    for entry, old, new in zip(saved["files"], before, after, strict=True):
        assert (entry["before"]["label"], entry["after"]["label"]) == (old[0], new[0])
        assert entry["before"]["probability"] == pytest.approx(old[1], abs=1e-5)
        assert entry["after"]["probability"] == pytest.approx(new[1], abs=1e-5)
        assert entry["changed"] == (old[0] != new[0])
    assert saved["changed"] == sum(old[0] != new[0] for old, new in zip(before, after, strict=True))
    with open(out / "changes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["path"], r["label_before"], r["label_after"], r["changed"]) for r in rows] == [
        (f["path"], f["before"]["label"], f["after"]["label"], str(int(f["changed"]))) for f in saved["files"]
    ]
    Predictor.from_checkpoint(out / "adapted.ckpt").known_speaker(str(her))  # the voice's statistics travel with it
    printed = capsys.readouterr().out
    assert f"12 recording(s) of 1 voice(s): {saved['changed']} changed label after 2 rounds" in printed
    assert "accuracy not reported: the recordings have no labels" in printed


def test_each_recorded_voice_gets_its_own_checkpoint(voices, tmp_path: Path) -> None:
    checkpoint, _, cache = voices
    her, him = record_voice(tmp_path / "her", 10, 1.25, seed=5), record_voice(tmp_path / "him", 11, 0.8, seed=6)
    out = tmp_path / "two"
    adapt(["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(out), str(her), str(him), *QUICK,
           "--adapt.check_validation", "false"])  # fmt: skip
    saved = json.loads((out / "adaptation.json").read_text())
    index = json.loads((out / "voices" / "index.json").read_text())
    assert sorted(index["voices"]) == sorted([str(her), str(him)]) and not (out / "adapted.ckpt").exists()
    assert [v["clips"] for v in saved["voices"]] == [10, 11] and saved["rounds"][0]["clips"] == 21
    for voice in saved["voices"]:
        files = [f for f in saved["files"] if f["voice"] == voice["voice"]]
        predictor = Predictor.from_checkpoint(out / "voices" / index["voices"][voice["voice"]]["checkpoint"])
        for entry, (label, probability) in zip(files, predictions(predictor, [f["path"] for f in files]), strict=True):
            assert entry["after"]["label"] == label
            assert entry["after"]["probability"] == pytest.approx(probability, abs=1e-5)


def test_too_few_recordings_are_refused_in_one_line(voices, tmp_path: Path, capsys) -> None:
    checkpoint, _, cache = voices
    few = record_voice(tmp_path / "few", 3, 1.1, seed=1)
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exit_:
        run_entry_point(lambda: adapt(["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(out),
                                       str(few)]))  # fmt: skip
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"error: too few recordings to adapt to: {few}: 3 recording(s), fewer than adapt.min_clips=10\n"
    )
    assert not out.exists()


def test_recordings_the_model_is_never_confident_about_are_refused(voices, tmp_path: Path) -> None:
    checkpoint, _, cache = voices
    her = record_voice(tmp_path / "her", 12, 1.25, seed=5)
    with pytest.raises(ConfigError, match=re.escape(f"too little to adapt to: {her}: none of its 12 recording(s) "
                                                    "reaches adapt.threshold=0.9999")):  # fmt: skip
        adapt(["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(tmp_path / "o"), str(her),
               "--adapt.threshold", "0.9999"])  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_bad_recordings_are_named(voices, tmp_path: Path) -> None:
    checkpoint, _, cache = voices
    her = record_voice(tmp_path / "her", 12, 1.25, seed=5)
    (her / "broken.wav").write_bytes(b"RIFF not really")
    (tmp_path / "empty").mkdir()
    common = ["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(tmp_path / "o")]
    with pytest.raises(AudioError, match=re.escape(str(her / "broken.wav"))):
        adapt([*common, str(her)])
    with pytest.raises(AudioError, match="no audio files"):
        adapt([*common, str(tmp_path / "empty")])
    assert not (tmp_path / "o").exists()


def test_help_print_config_and_config_files_work(voices, tmp_path: Path, capsys) -> None:
    checkpoint, _, cache = voices
    with pytest.raises(SystemExit) as exit_:
        adapt(["--help"])
    assert exit_.value.code == 0
    assert "RECORDINGS" in (text := capsys.readouterr().out) and "--adapt.min_clips" in text
    with pytest.raises(SystemExit) as exit_:
        adapt(["--ckpt", str(checkpoint), "--print_config"])
    assert exit_.value.code == 0 and "min_clips: 10" in capsys.readouterr().out
    her = record_voice(tmp_path / "her", 12, 1.25, seed=5)
    config = tmp_path / "adapt.yaml"
    config.write_text(f"ckpt: {checkpoint}\nrecordings: [{her}]\nadapt:\n  min_clips: 50\n")
    with pytest.raises(ConfigError, match=re.escape(f"{her}: 12 recording(s), fewer than adapt.min_clips=50")):
        adapt(["--config", str(config), "--data.cache_dir", str(cache)])


@pytest.mark.parametrize(
    "options,message",
    [(["--adapt.rounds", "0"], "adapt.rounds must be >= 1"),
     (["--adapt.threshold", "1.0"], r"adapt.threshold must be in \[0, 1\)"),
     (["--adapt.epochs", "0"], "adapt.epochs must be >= 1"),
     (["--adapt.lr", "0"], "adapt.lr must be > 0"),
     (["--adapt.min_clips", "0"], "adapt.min_clips must be >= 1")],
)  # fmt: skip
def test_bad_settings_are_refused_before_any_work(trained, tmp_path: Path, options: list[str], message: str) -> None:
    checkpoint, _, cache = trained
    with pytest.raises(ConfigError, match=message):
        adapt(["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--out", str(tmp_path / "o"), *options])
    assert not (tmp_path / "o").exists()


def test_the_training_split_cannot_be_adapted_to(trained) -> None:
    checkpoint, _, cache = trained
    with pytest.raises(ConfigError, match="^--split train: the training split has labels; adapt to val or test$"):
        adapt(["--ckpt", str(checkpoint), "--data.cache_dir", str(cache), "--split", "train"])
