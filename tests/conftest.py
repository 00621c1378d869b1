"""Shared fixtures: tiny corpora synthesised on the fly with seeded generators (no global RNG)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

CLASSES = ("up", "down", "flat")
# Real recordings for the tests that use them when present: $SPEECHRNN_DATA, else the shared folder
# beside the checkout (CI has it there); those tests skip when neither holds them.
REAL_DATA = Path(os.environ.get("SPEECHRNN_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def chirp(kind: str, seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A harmonic sweep whose pitch rises, falls or stays: order-dependent, tiny, and clearly labelled."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    start, end = {"up": (150, 300), "down": (300, 150), "flat": (220, 220)}[kind]
    f0 = np.linspace(start, end, len(t)) * rng.uniform(0.95, 1.05)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 5)) * np.hanning(len(t))
    return (0.3 * wave + 0.005 * rng.standard_normal(len(t))).astype(np.float32)


def write_corpus(
    root: Path, speakers: int = 4, per_class: int = 2, sample_rate: int = 16000, stereo_every: int = 0
) -> Path:
    """``root/<class>/<speaker>_<n>.wav`` with varied lengths; returns a manifest with speakers."""
    rng = np.random.default_rng(1234)
    rows = []
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for speaker in range(speakers):
            for n in range(per_class):
                wave = chirp(label, rng.uniform(0.15, 0.45), sample_rate, rng)
                if stereo_every and (speaker + n) % stereo_every == 0:
                    wave = np.stack([wave, 0.5 * wave], axis=1)
                path = root / label / f"spk{speaker}_{n}.wav"
                sf.write(path, wave, sample_rate)
                rows.append((f"{label}/{path.name}", label, f"spk{speaker}"))
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "speaker"])
        writer.writerows(rows)
    return manifest


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """Manifest of a 3-class, 6-speaker corpus at 16 kHz (some clips stereo)."""
    return write_corpus(tmp_path / "corpus", speakers=6, per_class=2, stereo_every=3)


def fit_speaker_model(root: Path, epochs: int = 2) -> tuple[Path, Path, Path]:
    """A tiny GRU fitted with per-speaker normalisation on a 6-speaker corpus under ``root``:
    ``(last.ckpt, manifest, cache folder)``."""
    from speechrnn.fit import main as fit

    manifest = write_corpus(root / "corpus", speakers=6, per_class=3)
    fit([
        "--data", "AudioFolderDataModule", "--data.manifest", str(manifest), "--data.cache_dir", str(root / "cache"),
        "--data.features.normalize", "speaker", "--data.features.deltas", "1", "--data.batch_size", "8",
        "--model.hidden_size", "8", "--model.num_layers", "1", "--trainer.max_epochs", str(epochs),
        "--trainer.default_root_dir", str(root / "runs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    return next((root / "runs").rglob("last.ckpt")), manifest, root / "cache"
