"""What a run gets when its user leaves the choices to speechrnn: the training budget, early stopping
that waits for the learning rate to anneal, the kept checkpoint, and speaker-aware data defaults
(which normalisation, validation and augmentation a corpus with and without speakers gets)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from speechrnn.callbacks import ANNEALED_FRACTION, TrainingBudget
from speechrnn.data import AudioFolderDataModule, FSDDDataModule
from speechrnn.data.augment import AugmentSettings
from speechrnn.data.defaults import (
    CPU_WAVEFORM_AUGMENT_MINUTES,
    FEATURE_AUGMENT,
    SPOTTING_NOISE,
    WAVEFORM_AUGMENT,
    choose_augmentation,
    training_audio_minutes,
)
from speechrnn.fit import main as fit
from tests.conftest import write_corpus
from tests.data.test_fsdd import write_fsdd


def fit_args(manifest: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--data", "AudioFolderDataModule", "--data.manifest", str(manifest),
        "--data.cache_dir", str(tmp_path / "cache"), "--data.batch_size", "4",
        "--model.hidden_size", "8", "--model.num_layers", "1",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        *extra,
    ]  # fmt: skip


def only_run(tmp_path: Path) -> Path:
    (run,) = (tmp_path / "runs" / "lightning_logs").iterdir()
    return run


def test_early_stopping_waits_for_the_annealed_phase_and_the_last_epoch_is_kept(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "corpus", speakers=6, per_class=2)
    # A threshold every epoch meets: ungated, the run would stop after its first epoch.
    fit(fit_args(manifest, tmp_path, "--trainer.max_epochs", "8", "--early_stopping.stopping_threshold", "0.0"))
    run = only_run(tmp_path)
    saved = json.loads((run / "test_metrics.json").read_text())
    epochs = saved["timing"]["epochs"]
    assert epochs == round(8 * ANNEALED_FRACTION) == 6  # stopped at the first check in the annealed phase
    assert Path(saved["checkpoint"]).name.startswith(f"epoch{epochs - 1:03d}-")  # the last epoch's model
    assert yaml.safe_load((run / "config.yaml").read_text())["checkpoint"]["monitor"] is None


def test_training_budget_gives_small_augmented_corpora_forty_epochs() -> None:
    budget = TrainingBudget()
    assert [budget.epochs_for(n, augmented=True) for n in (7, 66, 500, 3000)] == [100, 40, 20, 10]
    assert [budget.epochs_for(n) for n in (7, 66, 3000)] == [100, 16, 10]


def test_a_run_with_speakers_gets_speaker_normalisation_disjoint_validation_and_waveform_augmentation(
    tmp_path: Path,
) -> None:
    manifest = write_corpus(tmp_path / "corpus", speakers=6, per_class=2)
    fit(fit_args(manifest, tmp_path, "--trainer.max_epochs", "1"))
    run = only_run(tmp_path)
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]
    assert data["features"]["normalize"] == "speaker"
    assert data["on_device_features"] is True
    assert AugmentSettings(**{**data["augment"], "speed_factors": tuple(data["augment"]["speed_factors"]),
                              "noise_snr_db": tuple(data["augment"]["noise_snr_db"])}) == WAVEFORM_AUGMENT  # fmt: skip
    report = json.loads((run / "report_test" / "report.json").read_text())
    assert "speaker-disjoint" in json.dumps(report)


def test_a_corpus_without_speakers_keeps_per_utterance_normalisation(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus", speakers=6, per_class=2)
    dm = AudioFolderDataModule(root=tmp_path / "corpus", cache_dir=tmp_path / "cache", batch_size=4)
    dm.training_run = True
    dm.prepare_data()
    dm.setup("fit")
    assert dm.features.normalize == "utterance"
    assert dm.speaker_statistics == {}
    assert dm.augment == WAVEFORM_AUGMENT and dm.on_device_features  # 7 s of training audio on a CPU


def test_a_datamodule_used_by_hand_gives_plain_cached_features(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "corpus", speakers=6, per_class=2)
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache", batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.features.normalize == "speaker"
    assert dm.augment == AugmentSettings() and not dm.on_device_features
    features, lengths, _, _ = next(iter(dm.train_dataloader()))
    assert features.shape[2] == dm.feature_dim == 39


def test_waveform_augmentation_keeps_the_onset_of_clips_cut_at_the_word() -> None:
    """FSDD's clips start at the word: a shift to the left drops samples of its first consonant, so
    the default waveform augmentation drops at most 10 ms, where cached features shift by 50 ms."""
    import torch

    from speechrnn.data.augment import Augmenter

    rate = 8000
    audio = torch.arange(1, 4001, dtype=torch.float32).repeat(400, 1)
    lengths = torch.full((400,), 4000)
    shifted, new_lengths = Augmenter(
        dataclasses.replace(WAVEFORM_AUGMENT, speed_factors=(), coloured_noise=False), rate, 80
    ).waveforms(audio, lengths, 200)
    first = torch.stack([row[row > 0][0] for row in shifted])  # the sample each clip now starts with
    dropped = (first - 1).max().item()
    assert 0 < dropped <= 0.010 * rate and (new_lengths > lengths).any()
    assert FEATURE_AUGMENT.time_shift_ms == 50


def test_augmentation_rule() -> None:
    limit = CPU_WAVEFORM_AUGMENT_MINUTES
    assert choose_augmentation(None, None, limit, on_gpu=False)[:2] == (WAVEFORM_AUGMENT, True)
    assert choose_augmentation(None, None, limit + 1, on_gpu=False)[:2] == (FEATURE_AUGMENT, False)
    assert choose_augmentation(None, None, None, on_gpu=True)[:2] == (WAVEFORM_AUGMENT, True)
    assert choose_augmentation(None, False, 1.0, on_gpu=True)[:2] == (FEATURE_AUGMENT, False)
    given = dataclasses.replace(FEATURE_AUGMENT, coloured_noise=True)
    assert choose_augmentation(given, None, None, on_gpu=False)[:2] == (given, True)
    assert choose_augmentation(AugmentSettings(), None, None, on_gpu=False)[:2] == (AugmentSettings(), False)
    reason = choose_augmentation(None, None, limit + 1, on_gpu=False)[2]
    assert f"> {limit:g} min on a CPU" in reason


def test_an_open_set_run_mixes_in_its_background_whatever_the_corpus_size() -> None:
    limit = CPU_WAVEFORM_AUGMENT_MINUTES
    large, on_device, reason = choose_augmentation(None, None, limit + 1, on_gpu=False, background=True)
    assert (large, on_device) == (dataclasses.replace(FEATURE_AUGMENT, **SPOTTING_NOISE), True)
    assert large.background_noise and not large.coloured_noise and large.time_shift_ms == 200 and not large.speeds
    assert "background mixed in" in reason and f"> {limit:g} min on a CPU" in reason
    for small in (choose_augmentation(None, None, limit, on_gpu=False, background=True)[0],
                  choose_augmentation(None, None, None, on_gpu=True, background=True)[0]):  # fmt: skip
        assert small == dataclasses.replace(WAVEFORM_AUGMENT, **SPOTTING_NOISE)
        assert small.speeds and small.vtln_warp and small.background_noise and not small.coloured_noise
    assert choose_augmentation(None, False, 1.0, on_gpu=False, background=True)[:2] == (FEATURE_AUGMENT, False)
    given = AugmentSettings(time_shift_ms=10)
    assert choose_augmentation(given, None, None, on_gpu=False, background=True)[:2] == (given, False)


def test_an_open_set_run_normalises_over_the_dataset_and_hears_its_training_background(tmp_path: Path) -> None:
    from tests.data.test_open_set import write_background

    manifest = write_corpus(tmp_path / "corpus", speakers=6, per_class=2)
    options = {"manifest": manifest, "cache_dir": tmp_path / "cache", "batch_size": 4}
    dm = AudioFolderDataModule(**options, keywords=["up", "down"], background_dir=write_background(tmp_path / "bg"))
    dm.training_run = True
    dm.prepare_data()
    dm.setup("fit")
    assert dm.features.normalize == "dataset" and dm.speaker_statistics == {}
    assert dm.augment == dataclasses.replace(WAVEFORM_AUGMENT, **SPOTTING_NOISE) and dm.on_device_features
    assert "open set" in dm.training_defaults
    plain = AudioFolderDataModule(**options)  # no open set: speakers known, so per speaker
    plain.training_run = True
    plain.prepare_data()
    plain.setup("fit")
    assert plain.features.normalize == "speaker" and plain.augment == WAVEFORM_AUGMENT


def test_training_audio_is_counted_from_headers_until_the_limit(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "corpus", speakers=2, per_class=2)
    paths = [str(p) for p in sorted((tmp_path / "corpus").rglob("*.wav"))]
    total = training_audio_minutes(paths, limit=1e9)
    assert 12 * 0.15 / 60 <= total <= 12 * 0.45 / 60
    assert training_audio_minutes(paths, limit=0.0) < total  # stops at the first file past the limit
    assert training_audio_minutes([str(manifest)], limit=1.0) == 0.0  # not audio: counted as nothing


@pytest.mark.parametrize(
    ("speakers", "expected"),
    [(("alice", "bob", "carol"), "recordings"), (("s1", "s2", "s3", "s4", "s5", "s6"), "speaker")],
)
def test_fsdd_speaker_split_holds_out_a_validation_speaker_when_enough_are_left(
    tmp_path: Path, speakers: tuple[str, ...], expected: str
) -> None:
    root = write_fsdd(tmp_path / "recordings", speakers=speakers, indices=2)
    dm = FSDDDataModule(root=root, split="speaker", test_speakers=[speakers[0]])
    records = dm.records
    val = {r.speaker for r in records if r.split == "val"}
    train = {r.speaker for r in records if r.split == "train"}
    if expected == "speaker":
        assert len(val) == 1 and not val & train and len(train) == 4
    else:
        assert val == train == set(speakers[1:])
