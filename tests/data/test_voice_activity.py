"""Frame-level speech labels: segments in manifests, frames labelled from them, a VAD run end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechrnn.data import AudioFolderDataModule
from speechrnn.data.audio_base import VOICE_ACTIVITY_CLASSES, speech_frames
from speechrnn.data.augment import AugmentSettings
from speechrnn.data.corpora.folder import format_segments, parse_segments, read_manifest
from speechrnn.errors import ConfigError, UserInputError
from speechrnn.features import FeatureSettings
from speechrnn.fit import main as fit
from speechrnn.padding import PADDED_CLASS
from tests.conftest import chirp

RATE = 16000


def write_vad_corpus(root: Path, speakers: int = 6, per_speaker: int = 4, seed: int = 0) -> Path:
    """Clips of faint noise with one chirp at a random place; the manifest says where the chirp is."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = []
    for speaker in range(speakers):
        for n in range(per_speaker):
            seconds = rng.uniform(0.5, 0.8)
            clip = 0.003 * rng.standard_normal(int(seconds * RATE)).astype(np.float32)
            length = rng.uniform(0.15, 0.3)
            start = rng.uniform(0.0, seconds - length)
            a = int(start * RATE)
            tone = chirp("up", length, RATE, rng)
            clip[a : a + len(tone)] += tone / np.hanning(len(tone)).clip(0.5)  # audible from its first sample
            name = f"spk{speaker}_{n}.wav"
            sf.write(root / name, clip, RATE)
            rows.append((name, "tone", f"spk{speaker}", format_segments([(start, start + len(tone) / RATE)])))
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "speaker", "segments"])
        writer.writerows(rows)
    return manifest


def test_segments_cells_parse_and_format() -> None:
    assert parse_segments("0.5-0.75; 0.1-0.2") == ((0.1, 0.2), (0.5, 0.75))
    assert parse_segments("") == ()
    assert parse_segments(format_segments([(0.123456, 1.5)])) == ((0.1235, 1.5),)
    for bad, problem in [("0.5", "not 'start-end'"), ("a-b", "not 'start-end'"), ("0.7-0.2", "start < end")]:
        with pytest.raises(ValueError, match=problem):
            parse_segments(bad)


def test_a_bad_segments_cell_names_its_line(tmp_path: Path) -> None:
    manifest = write_vad_corpus(tmp_path / "corpus", speakers=1, per_speaker=2)
    lines = manifest.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",0.9-0.1"
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserInputError, match=r"manifest\.csv:3: segment '0\.9-0\.1'"):
        read_manifest(manifest)


def test_frames_are_speech_where_their_centre_is_inside_a_segment() -> None:
    settings = FeatureSettings(hop_ms=10.0).resolve(RATE)
    labels = speech_frames(((0.05, 0.1), (0.2, 0.215)), 30, settings)
    assert np.flatnonzero(labels).tolist() == [5, 6, 7, 8, 9, 20, 21]
    assert speech_frames((), 4, settings).tolist() == [0, 0, 0, 0]


def test_voice_activity_targets_follow_the_segments_of_each_clip(tmp_path: Path) -> None:
    manifest = write_vad_corpus(tmp_path / "corpus")
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache", voice_activity=True, batch_size=4)
    assert dm.task == "frame_classification"
    assert dm.class_names == list(VOICE_ACTIVITY_CLASSES) == ["non-speech", "speech"]
    dm.setup("fit")
    targets = dm.targets()
    hop = dm.features.hop_length / dm.features.rate
    for position in range(len(targets)):
        ((start, end),) = dm.record_of(position).segments
        frames = targets[position]
        assert len(frames) == dm.store.lengths[position]
        speech = np.flatnonzero(frames)
        assert speech[0] == int(np.ceil(start / hop)) and speech[-1] == int(np.ceil(end / hop)) - 1
        assert len(speech) == speech[-1] - speech[0] + 1
    features, lengths, batch_targets, _ = next(iter(dm.train_dataloader()))
    assert batch_targets.shape == features.shape[:2]
    for row, length in enumerate(lengths.tolist()):
        assert (batch_targets[row, length:] == PADDED_CLASS).all()
        assert set(batch_targets[row, :length].unique().tolist()) == {0, 1}


def test_voice_activity_needs_segments_and_frame_aligned_features(tmp_path: Path) -> None:
    manifest = write_vad_corpus(tmp_path / "corpus", speakers=4, per_speaker=2)
    rows = list(csv.reader(manifest.open()))
    plain = tmp_path / "plain.csv"
    with open(plain, "w", newline="") as handle:
        csv.writer(handle).writerows(
            [[r[0] if i == 0 else str(manifest.parent / r[0]), *r[1:3]] for i, r in enumerate(rows)]
        )
    dm = AudioFolderDataModule(manifest=plain, cache_dir=tmp_path / "cache", voice_activity=True)
    with pytest.raises(UserInputError, match="voice_activity needs the speech segments.*8 clip"):
        dm.prepare_data()
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ConfigError, match="voice_activity labels frames"):
        AudioFolderDataModule(manifest=manifest, voice_activity=True, on_device_features=True)
    with pytest.raises(ConfigError, match="time_shift_ms"):
        AudioFolderDataModule(manifest=manifest, voice_activity=True, augment=AugmentSettings(time_shift_ms=50))


def test_a_causal_gru_learns_voice_activity_through_fit(tmp_path: Path) -> None:
    manifest = write_vad_corpus(tmp_path / "corpus", speakers=8, per_speaker=6)
    torch.manual_seed(0)
    metrics = fit([
        "--data", "AudioFolderDataModule", "--data.manifest", str(manifest), "--data.voice_activity", "true",
        "--data.cache_dir", str(tmp_path / "cache"), "--data.batch_size", "8",
        "--data.features.normalize", "dataset", "--model.cell", "gru", "--model.bidirectional", "false",
        "--model.hidden_size", "16", "--model.num_layers", "1", "--trainer.max_epochs", "12",
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--seed_everything", "0",
    ])  # fmt: skip
    assert metrics["test/acc"] > 0.9
    report = json.loads(next((tmp_path / "runs").rglob("report_test/report.json")).read_text())
    assert report["class_names"] == ["non-speech", "speech"]
    assert report["per_class"]["speech"]["f1-score"] > 0.9
    assert report["bits_per_step"] == pytest.approx(report["log_loss"] / np.log(2))
    rows = list(csv.DictReader(next((tmp_path / "runs").rglob("report_test/predictions.csv")).open()))
    assert {"path", "frames", "frame_accuracy", "speaker"} <= set(rows[0])
    assert report["sequences"] == len(rows) >= 6
    assert report["examples"] == sum(int(r["frames"]) for r in rows) > 40 * len(rows)  # frames, not clips
