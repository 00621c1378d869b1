"""Bad audio gets an error that names the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechrnn.audio_io import AudioError, read_audio


def write(path: Path, samples: np.ndarray, rate: int = 16000, subtype: str | None = None) -> Path:
    sf.write(path, samples, rate, subtype=subtype)
    return path


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda d: d / "missing.wav", "file not found"),
        (lambda d: (d / "garbage.wav").write_bytes(b"not audio at all") and d / "garbage.wav", "cannot read audio"),
        (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "cannot read audio"),
        (lambda d: write(d / "empty.wav", np.zeros(0, np.float32)), "empty"),
        (lambda d: write(d / "silent.wav", np.zeros(8000, np.float32)), "silent"),
        (lambda d: write(d / "short.wav", np.full(50, 0.5, np.float32)), "too short"),
        (lambda d: write(d / "nan.wav", np.r_[np.full(800, 0.1), np.nan].astype(np.float32), subtype="FLOAT"), "NaN"),
    ],
)
def test_bad_audio_is_reported_with_its_path(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(AudioError, match=reason) as info:
        read_audio(path, 16000, min_samples=400)
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_stereo_is_mixed_down(tmp_path: Path) -> None:
    left = np.sin(np.linspace(0, 100, 4000)).astype(np.float32) * 0.5
    path = write(tmp_path / "s.wav", np.stack([left, np.zeros_like(left)], 1), 8000)
    mono = read_audio(path, 8000)
    np.testing.assert_allclose(mono.numpy(), left / 2, atol=1e-4)
