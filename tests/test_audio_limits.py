"""Sanity limits on audio, checked from the header before anything is decoded or resampled: a header
that lies about its sample rate (16,000 samples said to be at 1 Hz: 4.4 hours once resampled to
16 kHz, gigabytes of memory) and a file over the length limit are refused at once, by every command
that reads audio (``predict``, ``spot``, ``fit``'s corpus scan; ``serve`` in ``tests/test_serve.py``)."""

from __future__ import annotations

import csv
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechrnn.audio_io import MAX_SECONDS, SAMPLE_RATE_RANGE, AudioBytes, AudioError, read_audio
from speechrnn.data.audio_base import extract_features_batch
from speechrnn.features import FeatureSettings
from speechrnn.spotting.blocks import open_audio
from tests.conftest import write_corpus
from tests.test_spot import save_checkpoint, tiny_model

LIE = "sample rate 1 Hz is outside 1000-768000 Hz: the header is wrong or this is not audio"


def lying_wav(path: Path, samples: int = 16000, rate: int = 1) -> Path:
    """A 16-bit wav of ``samples`` samples of a tone whose header says ``rate`` Hz."""
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000)
    sf.write(path, tone.astype(np.float32), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:28] = rate.to_bytes(4, "little")
    data[28:32] = (rate * 2).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


@contextmanager
def quick_and_flat(seconds: float = 1.0, megabytes: float = 100.0) -> Iterator[None]:
    """The block runs in under ``seconds`` and raises the process's peak memory by under ``megabytes``."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    yield
    assert time.perf_counter() - started < seconds
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024 < megabytes


def test_a_header_that_lies_about_its_rate_is_refused_before_resampling(tmp_path: Path) -> None:
    path = lying_wav(tmp_path / "lying.wav")
    assert sf.info(path).samplerate == 1 and sf.info(path).frames == 16000
    with quick_and_flat(), pytest.raises(AudioError) as refused:
        read_audio(path, 16000)
    assert str(refused.value) == f"{path}: {LIE}" and refused.value.problem == "rate"
    with quick_and_flat(), pytest.raises(AudioError, match="sample rate 1 Hz"):
        read_audio(AudioBytes(path.read_bytes(), "upload.wav"), 16000)
    with quick_and_flat(), pytest.raises(AudioError, match="sample rate 1 Hz"):
        open_audio(path)  # spot's block reader: any length, but not any rate
    with pytest.raises(AudioError, match="sample rate 2000000 Hz is outside"):
        read_audio(lying_wav(tmp_path / "fast.wav", rate=2_000_000), 16000)
    low, high = SAMPLE_RATE_RANGE
    for rate in (low, 8000, 44100, high):
        assert read_audio(
            lying_wav(tmp_path / f"ok{rate}.wav", samples=max(rate // 10, 2000), rate=rate), 16000
        ).numel()


def test_a_file_over_the_length_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    long = tmp_path / "long.wav"
    sf.write(long, np.full(int((MAX_SECONDS + 60) * 1000), 0.1, np.float32), 1000)
    with quick_and_flat(), pytest.raises(AudioError) as refused:
        read_audio(long, 16000)
    assert refused.value.problem == "too_long"
    assert str(refused.value) == (
        f"{long}: too long (660.0 s, the limit is 600.0 s; speechrnn spot reads longer recordings block by block)"
    )
    assert read_audio(long, 16000, max_seconds=None).numel() == 660 * 16000  # a caller may lift it
    with pytest.raises(AudioError, match=r"too long \(660\.0 s, the limit is 2\.0 s; max_seconds sets it"):
        read_audio(long, 16000, max_samples=32000)
    assert read_audio(long, 16000, max_samples=32000, crop=True).numel() == 32000  # crop reads the start only


def test_predict_refuses_the_lying_file_at_once_and_classifies_the_rest(tmp_path: Path, capsys) -> None:
    from speechrnn.predict import main as predict

    checkpoint = save_checkpoint(tiny_model(), tmp_path / "model.ckpt")
    good = tmp_path / "good.wav"
    sf.write(good, 0.3 * np.sin(np.arange(16000) / 5).astype(np.float32), 16000)
    lying = lying_wav(tmp_path / "lying.wav")
    predict(["--ckpt", str(checkpoint), str(good)])  # the model and front end loaded once
    capsys.readouterr()
    with quick_and_flat():
        assert predict(["--ckpt", str(checkpoint), str(lying), str(good)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: {lying}: {LIE}"  # no long-file warning pointing to spot either
    assert captured.out.startswith(str(good))


def test_spot_refuses_the_lying_file(tmp_path: Path, capsys) -> None:
    from speechrnn.spot import main as spot

    checkpoint = save_checkpoint(tiny_model("dataset", clip_seconds=1.0), tmp_path / "model.ckpt")
    lying = lying_wav(tmp_path / "lying.wav")
    with quick_and_flat(seconds=5.0):
        assert spot(["--ckpt", str(checkpoint), str(lying)]) == 1
    assert f"error: {lying}: {LIE}" in capsys.readouterr().err.splitlines()


def test_the_corpus_scan_of_fit_refuses_the_lying_file(tmp_path: Path) -> None:
    from speechrnn.data import AudioFolderDataModule

    settings = FeatureSettings(sample_rate=16000, n_mfcc=8, n_mels=20)
    lying = lying_wav(tmp_path / "lying.wav")
    with quick_and_flat():
        (result,) = extract_features_batch([str(lying)], settings, skip_errors=True)
    assert isinstance(result, AudioError) and str(result) == f"{lying}: {LIE}"

    manifest = write_corpus(tmp_path / "corpus", speakers=3, per_class=2)
    lying_wav(manifest.parent / "up" / "lying.wav")
    with open(manifest, "a", newline="") as handle:
        csv.writer(handle).writerow(["up/lying.wav", "up", "spk0"])
    with quick_and_flat(seconds=30.0), pytest.raises(AudioError, match=r"lying\.wav: sample rate 1 Hz is outside"):
        AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache").prepare_data()
