"""Keyword spotting in long audio: events from hand-made posterior tracks, the posterior track against
offline inference on the same windows, block reading against whole files, stream against window
mode where they must agree, the ``spot`` command, and ``predict``'s warning for long files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from speechrnn.audio_io import read_audio
from speechrnn.errors import ConfigError
from speechrnn.features import FeatureSettings
from speechrnn.inference import WaveformClassifier
from speechrnn.models.classifier import RNNClassifier
from speechrnn.spotting.blocks import BlockResampler, open_audio
from speechrnn.spotting.events import Event, detect_events, smooth, smoothing_width
from speechrnn.spotting.scoring import PosteriorTrack, resolve_mode, score_blocks, score_file, speaker_statistics
from speechrnn.spotting.settings import DEFAULT_THRESHOLD, stored_spotting, training_window_seconds

CLASSES = ["yes", "no", "_unknown_"]
RATE = 16000
ATOL = 1e-5


# --- hand-made tracks -------------------------------------------------------------------------------
def track(columns: dict[str, list[float]], hop_s: float = 0.1, window_s: float = 1.0) -> PosteriorTrack:
    """A track whose classes hold the given values (the first time is ``window_s``)."""
    names = list(columns)
    values = np.array([columns[name] for name in names], dtype=np.float32).T
    times = window_s + hop_s * np.arange(len(values))
    return PosteriorTrack(times, values, names, window_s, hop_s, duration_s=float(times[-1]))


def test_a_run_above_threshold_is_one_event_spanning_its_windows() -> None:
    yes = [0.1, 0.1, 0.8, 0.9, 0.7, 0.1, 0.1]
    events = detect_events(track({"yes": yes, "no": [0.2] * 7}), 0.5, smoothing_s=0, file="a.wav")
    # above threshold for the windows ending at 1.2, 1.3, 1.4 s: from the first's start to the last's end
    assert events == [Event("a.wav", pytest.approx(0.2), pytest.approx(1.4), "yes", pytest.approx(0.9))]
    assert detect_events(track({"yes": yes}), 0.95, smoothing_s=0) == []
    assert len(detect_events(track({"yes": yes}), 0.9, smoothing_s=0)) == 1  # >= threshold counts


def test_per_class_thresholds_and_classes_left_out() -> None:
    tracked = track({"yes": [0.1, 0.6, 0.1], "no": [0.1, 0.7, 0.1]})
    assert [e.label for e in detect_events(tracked, {"yes": 0.5, "no": 0.8}, smoothing_s=0)] == ["yes"]
    assert [e.label for e in detect_events(tracked, {"no": 0.5}, smoothing_s=0)] == ["no"]
    with pytest.raises(ValueError, match=r"thresholds for classes the track does not have: \['maybe'\]"):
        detect_events(tracked, {"maybe": 0.5})


def test_smoothing_removes_a_one_hop_spike_and_keeps_a_word() -> None:
    spike = [0.0] * 5 + [0.9] + [0.0] * 5
    word = [0.0] * 3 + [0.9] * 5 + [0.0] * 3
    assert len(detect_events(track({"yes": spike}), 0.5, smoothing_s=0)) == 1
    assert detect_events(track({"yes": spike}), 0.5, smoothing_s=0.3) == []
    (event,) = detect_events(track({"yes": word}), 0.5, smoothing_s=0.3)
    assert event.score == pytest.approx(0.9)  # the middle of the word keeps its value
    assert smoothing_width(0.3, 0.1) == 3 and smoothing_width(0.2, 0.1) == 3 and smoothing_width(0.0, 0.1) == 1
    # the ends average the rows that exist
    np.testing.assert_allclose(smooth(np.array([[3.0], [0.0], [0.0], [6.0]]), 3)[:, 0], [1.5, 1.0, 2.0, 3.0])


def test_refractory_time_merges_runs_of_one_class() -> None:
    dips = [0.0, 0.9, 0.9, 0.0, 0.0, 0.0, 0.9, 0.9, 0.0]  # two runs, the second starts 0.5 s after the first ends
    merged = detect_events(track({"yes": dips}), 0.5, smoothing_s=0, refractory_s=1.0)
    assert [(e.start, e.end) for e in merged] == [pytest.approx((0.1, 1.7))]
    apart = detect_events(track({"yes": dips}), 0.5, smoothing_s=0, refractory_s=0.4)
    assert [(e.start, e.end) for e in apart] == [pytest.approx((0.1, 1.2)), pytest.approx((0.6, 1.7))]
    # refractory time is per class: a run of another class in between changes nothing
    both = detect_events(track({"yes": dips, "no": [0.0, 0.0, 0.0, 0.9, 0.9, 0.0, 0.0, 0.0, 0.0]}), 0.5, smoothing_s=0)
    assert [e.label for e in both] == ["yes", "no"]


def test_unknown_and_silence_are_never_events() -> None:
    tracked = track({"_unknown_": [0.9] * 4, "_silence_": [0.9] * 4, "yes": [0.9] * 4})
    assert [e.label for e in detect_events(tracked, 0.5)] == ["yes"]
    assert [e.label for e in detect_events(tracked, 0.5, ignore=())] == ["_silence_", "_unknown_", "yes"]


def test_event_spans_are_clipped_to_the_audio() -> None:
    short = PosteriorTrack(np.array([0.4]), np.array([[0.9]], np.float32), ["yes"], 1.0, 0.1, duration_s=0.4)
    assert detect_events(short, 0.5) == [Event("", 0.0, pytest.approx(0.4), "yes", pytest.approx(0.9))]
    assert detect_events(track({"yes": [0.2] * 3}), 0.5) == []


# --- models and audio the tests make -----------------------------------------------------------------
def tiny_model(
    normalize: str = "utterance",
    bidirectional: bool = False,
    pooling: str = "mean",
    task: str = "classification",
    cell: str = "gru",
    **config: object,
) -> RNNClassifier:
    torch.manual_seed(0)
    settings = FeatureSettings(sample_rate=RATE, n_mfcc=8, n_mels=20, deltas=1, normalize=normalize)  # type: ignore[arg-type]
    model = RNNClassifier(
        settings.feature_dim, len(CLASSES), task=task, class_names=CLASSES, cell=cell, hidden_size=8,
        num_layers=2, bidirectional=bidirectional, pooling=pooling,
    )  # fmt: skip
    dim = settings.feature_dim
    statistics = {"feature_mean": [0.5] * dim, "feature_std": [3.0] * dim} if normalize == "dataset" else {}
    model.data_config = {"class_names": CLASSES, "features": settings.to_dict(), **statistics, **config}
    return model.eval()


def noise(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """Noise with a slowly changing level and a tone now and then: windows that differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    level = 0.05 + 0.04 * np.sin(2 * np.pi * 0.7 * t)
    tone = 0.2 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 0.3 * t) > 0.5)
    return (level * rng.standard_normal(len(t)) + tone).astype(np.float32)


def blocks(samples: np.ndarray, sizes: tuple[int, ...] = (7001, 313, 12000)) -> list[np.ndarray]:
    """``samples`` cut into blocks of cycling, awkward sizes."""
    cuts, position, index = [], 0, 0
    while position < len(samples):
        size = sizes[index % len(sizes)]
        cuts.append(samples[position : position + size])
        position, index = position + size, index + 1
    return cuts


def offline_windows(model: RNNClassifier, audio: np.ndarray, ends: np.ndarray, window: int, **speaker) -> np.ndarray:
    """What offline inference gives on each window cut out of ``audio`` (ending at sample ``ends``)."""
    classifier = WaveformClassifier.from_model(model)
    windows = torch.from_numpy(np.stack([audio[end - window : end] for end in ends]))
    with torch.no_grad():
        return classifier(windows, torch.full((len(windows),), window), **speaker).numpy()


# --- the posterior track ----------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", ["utterance", "speaker", "dataset"])
def test_window_mode_scores_each_window_as_offline_inference_does(normalize: str) -> None:
    model = tiny_model(normalize, bidirectional=True)
    audio = noise(4.3)
    speaker = (torch.linspace(-1, 1, 16), torch.linspace(1, 3, 16)) if normalize == "speaker" else None
    scored = score_blocks(model, blocks(audio), RATE, hop_s=0.1, window_s=1.0, batch_size=7, speaker=speaker)
    assert scored.mode == "window" and scored.window_s == 1.0 and scored.hop_s == pytest.approx(0.1)
    np.testing.assert_allclose(scored.times, 1.0 + 0.1 * np.arange(34), atol=1e-9)  # up to 4.3 s
    assert scored.duration_s == pytest.approx(4.3) and scored.probabilities.dtype == np.float32
    ends = np.round(scored.times * RATE).astype(int)
    extra = {"mean": speaker[0], "std": speaker[1]} if speaker else {}
    expected = offline_windows(model, audio, ends, RATE, **extra)
    np.testing.assert_allclose(scored.probabilities, expected, rtol=0, atol=ATOL)


def test_temperature_divides_the_logits() -> None:
    model, audio = tiny_model(), noise(2.0)
    plain = score_blocks(model, [audio], RATE, window_s=1.0)
    warm = score_blocks(model, [audio], RATE, window_s=1.0, temperature=2.0)
    expected = torch.softmax(torch.log(torch.from_numpy(plain.probabilities)) / 2.0, -1).numpy()
    np.testing.assert_allclose(warm.probabilities, expected, rtol=0, atol=ATOL)


def test_audio_shorter_than_a_window_is_one_window_and_a_window_comes_from_the_checkpoint() -> None:
    model = tiny_model(clip_seconds={"median": 0.8, "max": 1.1})
    assert training_window_seconds(model.data_config) == 0.8
    audio = noise(0.5)
    scored = score_blocks(model, [audio], RATE)
    assert scored.window_s == pytest.approx(0.8) and list(scored.times) == [0.5]
    np.testing.assert_allclose(scored.probabilities, offline_windows(model, audio, [len(audio)], len(audio)), atol=ATOL)
    with pytest.raises(ValueError, match="audio too short"):
        score_blocks(model, [audio[:100]], RATE)


def test_a_file_read_in_blocks_at_another_rate_gives_the_track_of_the_whole_file(tmp_path: Path) -> None:
    model = tiny_model()
    audio = noise(6.0, rate=44100, seed=3)
    path = tmp_path / "long.wav"
    sf.write(path, np.stack([audio, 0.5 * audio], axis=1), 44100)  # stereo, 44.1 kHz
    whole = read_audio(path, RATE).numpy()  # resampled at once, as training reads files
    expected = score_blocks(model, [whole], RATE, window_s=1.0)
    for block_s in (0.37, 2.5):
        got = score_file(model, path, window_s=1.0, block_s=block_s)
        np.testing.assert_allclose(got.times, expected.times, atol=1e-9)
        np.testing.assert_allclose(got.probabilities, expected.probabilities, rtol=0, atol=ATOL)
    ends = np.round(expected.times * RATE).astype(int)
    np.testing.assert_allclose(expected.probabilities, offline_windows(model, whole, ends, RATE), atol=ATOL)


@pytest.mark.parametrize(("orig", "new"), [(44100, 16000), (8000, 16000), (22050, 16000), (48000, 8000)])
def test_block_resampling_equals_resampling_the_whole_signal(orig: int, new: int) -> None:
    signal = np.random.default_rng(orig).standard_normal(orig * 2 + 77).astype(np.float32)
    expected = torchaudio.transforms.Resample(orig, new)(torch.from_numpy(signal)).numpy()
    resampler = BlockResampler(orig, new)
    got = np.concatenate([resampler.push(block) for block in blocks(signal, (1, 4999, 17, orig))] + [resampler.flush()])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("pooling", ["mean", "last", "attention"])
def test_stream_equals_window_on_audio_of_one_window(cell: str, pooling: str) -> None:
    """With the state fresh at the start and frame-wise normalisation, one window is the same clip."""
    model = tiny_model("dataset", cell=cell, pooling=pooling)
    for seconds in (1.0, 0.73):
        audio = noise(seconds, seed=5)
        window = score_blocks(model, blocks(audio, (3001, 77)), RATE, window_s=1.0, mode="window")
        stream = score_blocks(model, blocks(audio, (3001, 77)), RATE, window_s=1.0, mode="stream")
        assert stream.mode == "stream" and list(stream.times) == list(window.times) == [pytest.approx(seconds)]
        np.testing.assert_allclose(stream.probabilities, window.probabilities, rtol=0, atol=ATOL)


def test_stream_gives_the_window_grid_and_stays_near_window_mode_on_long_audio() -> None:
    model = tiny_model("dataset")
    audio = noise(5.0, seed=6)
    window = score_blocks(model, [audio], RATE, window_s=1.0, mode="window")
    stream = score_blocks(model, blocks(audio), RATE, window_s=1.0, mode="stream")
    np.testing.assert_allclose(stream.times, window.times, atol=1e-9)
    # the first window starts with a fresh state: only its last frames (real audio, not reflected) differ
    np.testing.assert_allclose(stream.probabilities[0], window.probabilities[0], atol=1e-3)


def test_a_per_step_model_streams_its_offline_output_on_the_whole_recording() -> None:
    model = tiny_model("speaker", task="frame_classification")
    assert resolve_mode(model) == "stream"  # exact to how it was trained, on whole sequences
    audio = noise(3.0, seed=7)
    speaker = speaker_statistics(model, blocks(audio), RATE, window_s=1.0)
    scored = score_blocks(model, blocks(audio), RATE, hop_s=0.1, speaker=speaker)
    assert scored.mode == "stream" and scored.window_s == pytest.approx(0.1)
    with torch.no_grad():
        offline = WaveformClassifier.from_model(model)(
            torch.from_numpy(audio)[None], torch.tensor([len(audio)]), *speaker
        )
    frames = np.round(scored.times * 100).astype(int)
    np.testing.assert_allclose(scored.probabilities, offline[0, frames].numpy(), rtol=0, atol=ATOL)


def test_modes_each_model_can_use() -> None:
    assert resolve_mode(tiny_model("dataset")) == "window"  # a whole-clip classifier: windows are its clips
    assert resolve_mode(tiny_model("dataset"), "stream") == "stream"
    with pytest.raises(ValueError, match="stream mode needs a unidirectional model"):
        resolve_mode(tiny_model(bidirectional=True), "stream")
    with pytest.raises(ValueError, match="stream mode needs features normalised frame by frame"):
        resolve_mode(tiny_model("utterance"), "stream")
    assert resolve_mode(tiny_model("utterance", task="frame_classification")) == "window"
    with pytest.raises(ValueError, match="pass the speaker's statistics"):
        score_blocks(tiny_model("speaker"), [noise(1.0)], RATE)


def test_a_speaker_model_scores_a_file_with_the_files_own_statistics(tmp_path: Path) -> None:
    model, audio = tiny_model("speaker"), noise(3.5, seed=8)
    sf.write(tmp_path / "a.wav", audio, RATE)
    statistics = speaker_statistics(model, [audio], RATE, window_s=1.0)
    expected = score_blocks(model, [audio], RATE, window_s=1.0, speaker=statistics)
    got = score_file(model, tmp_path / "a.wav", window_s=1.0, block_s=0.6)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, rtol=0, atol=ATOL)


def test_bad_files_are_named(tmp_path: Path) -> None:
    from speechrnn.audio_io import AudioError

    (tmp_path / "junk.wav").write_bytes(b"RIFF not audio")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), RATE)
    nan = noise(1.0)
    nan[8000] = np.nan
    sf.write(tmp_path / "nan.wav", nan, RATE, subtype="FLOAT")
    sf.write(tmp_path / "tiny.wav", noise(0.01), RATE)
    with pytest.raises(AudioError, match=r"missing\.wav: file not found"):
        open_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match=r"junk\.wav: cannot read audio"):
        open_audio(tmp_path / "junk.wav")
    with pytest.raises(AudioError, match=r"empty\.wav: empty file"):
        open_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match=r"nan\.wav: contains NaN or infinite samples \(at 0\.50 s\)"):
        score_file(tiny_model(), tmp_path / "nan.wav")
    with pytest.raises(AudioError, match=r"tiny\.wav: audio too short"):
        score_file(tiny_model(), tmp_path / "tiny.wav")


def test_calibration_stored_with_the_model() -> None:
    stored = {"temperature": 1.5, "thresholds": {"yes": 0.7}, "target_fa_per_hour": 1.0}
    calibration = stored_spotting({"spotting": stored})
    assert calibration.calibrated and calibration.temperature == 1.5 and calibration.target_fa_per_hour == 1.0
    assert calibration.threshold("yes") == 0.7 and calibration.threshold("no") == DEFAULT_THRESHOLD
    with pytest.warns(UserWarning, match="not calibrated for spotting"):
        assert not stored_spotting({}).calibrated
    with pytest.raises(ConfigError, match="spotting threshold of 'yes' must be a number in"):
        stored_spotting({"spotting": {"thresholds": {"yes": 2}}})
    with pytest.raises(ConfigError, match="spotting temperature must be a positive number"):
        stored_spotting({"spotting": {"temperature": 0}})
    detection = {"hop_s": 0.2, "window_s": 1.8, "smoothing_s": 0.0, "mode": "window"}
    assert stored_spotting({"spotting": {**stored, **detection}}).detection == detection


# --- the spot command -------------------------------------------------------------------------------
def save_checkpoint(model: RNNClassifier, path: Path) -> Path:
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "data_config": model.data_config,
            "pytorch-lightning_version": "2.5.0",
        },
        path,
    )
    return path


@pytest.fixture
def keyword_checkpoint(tmp_path: Path) -> Path:
    """A model that hears "yes" in everything (its head's bias), recorded 1 s clips, no calibration."""
    model = tiny_model("dataset", clip_seconds=1.0)
    with torch.no_grad():
        model.net.head.weight.zero_()
        model.net.head.bias.copy_(torch.tensor([6.0, 0.0, 3.0]))
    return save_checkpoint(model, tmp_path / "model.ckpt")


def run_spot(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from speechrnn.spot import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_spot_writes_events_as_a_table_csv_or_jsonl(keyword_checkpoint: Path, tmp_path, capsys) -> None:
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    sf.write(audio_dir / "a.wav", noise(3.0), RATE)
    sf.write(audio_dir / "b.flac", noise(2.0, rate=8000), 8000)
    status, out, err = run_spot(["--ckpt", keyword_checkpoint, audio_dir], capsys)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "file\tstart_s\tend_s\tlabel\tscore"
    assert lines[1].split("\t") == [str(audio_dir / "a.wav"), "    0.000", "    3.000", "yes", "0.9503"]
    assert len(lines) == 3 and lines[2].startswith(str(audio_dir / "b.flac"))
    assert "warning:" in err and "is not calibrated for spotting" in err
    assert f"{audio_dir / 'a.wav'}: 3.0 s of audio in" in err and "real-time factor" in err
    assert err.strip().splitlines()[-1].startswith("spot: 2 file(s), 5.0 s of audio in")

    status, out, _ = run_spot(["--ckpt", keyword_checkpoint, audio_dir / "a.wav", "--format", "jsonl"], capsys)
    assert json.loads(out) == {
        "file": str(audio_dir / "a.wav"),
        "start": 0.0,
        "end": 3.0,
        "label": "yes",
        "score": 0.9503,
    }

    target = tmp_path / "out" / "events.csv"
    args = ["--ckpt", keyword_checkpoint, audio_dir, "--format", "csv", "--out", target, "--thresholds", "{yes: 0.99}"]
    status, out, _ = run_spot(args, capsys)
    assert status == 0 and out == ""
    assert target.read_text() == "file,start,end,label,score\n"  # nothing reaches 0.99
    status, _, _ = run_spot([*args[:-1], "{no: 0.0}"], capsys)
    rows = target.read_text().splitlines()
    assert rows[0] == "file,start,end,label,score" and [r.split(",")[3] for r in rows[1:]] == ["no", "yes", "no", "yes"]


def test_spot_names_each_bad_file_and_goes_on(keyword_checkpoint: Path, tmp_path, capsys) -> None:
    sf.write(tmp_path / "good.wav", noise(2.0), RATE)
    (tmp_path / "junk.wav").write_bytes(b"RIFF not audio")
    (tmp_path / "empty").mkdir()
    files = [tmp_path / "missing.wav", tmp_path / "junk.wav", tmp_path / "empty", tmp_path / "good.wav"]
    status, out, err = run_spot(["--ckpt", keyword_checkpoint, *files], capsys)
    assert status == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {tmp_path / 'missing.wav'}: file not found",
        f"error: {tmp_path / 'junk.wav'}: cannot read audio (unknown format or corrupt file): "
        + errors[1].split("corrupt file): ", 1)[1],
        f"error: {tmp_path / 'empty'}: no audio files (.wav, .flac, .ogg, .aiff, .aif) in this folder",
    ]
    assert out.splitlines()[1].startswith(str(tmp_path / "good.wav"))
    assert "spot: 1 file(s)" in err and "3 failed" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--threshold", "1.5"], "threshold must be a number in [0, 1], got 1.5"),
        (["--thresholds", "{maybe: 0.5}"], "thresholds for unknown classes ['maybe']"),
        (["--hop_s", "0"], "--hop_s must be > 0, got 0.0"),
        (["--speaker", "spk1"], "does not normalise per speaker; leave --speaker out"),
        (["--format", "xml"], 'Parser key "format"'),
    ],
)
def test_spot_refuses_impossible_options(keyword_checkpoint: Path, tmp_path, capsys, options, message) -> None:
    from speechrnn.errors import UserInputError

    sf.write(tmp_path / "a.wav", noise(1.0), RATE)
    with pytest.raises(UserInputError) as error:
        run_spot(["--ckpt", keyword_checkpoint, tmp_path / "a.wav", *options], capsys)
    assert message in str(error.value)


@pytest.mark.slow
def test_spot_is_a_speechrnn_command_with_one_line_errors(keyword_checkpoint: Path, tmp_path) -> None:
    import subprocess
    import sys

    sf.write(tmp_path / "a.wav", noise(1.0), RATE)
    command = [sys.executable, "-m", "speechrnn", "spot", "--ckpt", str(keyword_checkpoint), str(tmp_path / "a.wav")]
    result = subprocess.run([*command, "--threshold", "2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.splitlines()[-1].startswith("error: threshold must be")
    result = subprocess.run(
        [*command, "--thresholds", "{yes: 0.9, no: 0.2}"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "\tyes\t" in result.stdout and "\tno\t" not in result.stdout  # yes and no are labels, not booleans


def test_spot_refuses_stream_mode_for_a_bidirectional_model(tmp_path, capsys) -> None:
    checkpoint = save_checkpoint(tiny_model("dataset", bidirectional=True), tmp_path / "bi.ckpt")
    sf.write(tmp_path / "a.wav", noise(1.0), RATE)
    with pytest.raises(ConfigError, match="--mode stream: stream mode needs a unidirectional model"):
        run_spot(["--ckpt", checkpoint, tmp_path / "a.wav", "--mode", "stream"], capsys)


def test_spot_reads_with_the_calibration_stored_in_the_checkpoint(tmp_path, capsys) -> None:
    """Temperature, thresholds and the detection settings they were chosen with come from the checkpoint."""
    model = tiny_model("dataset", clip_seconds=1.0)
    with torch.no_grad():
        model.net.head.weight.zero_()
        model.net.head.bias.copy_(torch.tensor([6.0, 0.0, 3.0]))  # p(yes) 0.950 at temperature 1, 0.786 at 2
    stored = {"temperature": 2.0, "thresholds": {"yes": 0.9, "no": 0.9}, "target_fa_per_hour": 1.0}
    model.data_config["spotting"] = {**stored, "hop_s": 0.2, "smoothing_s": 0.0, "refractory_s": 0.5, "mode": "window"}
    checkpoint = save_checkpoint(model, tmp_path / "calibrated.ckpt")
    sf.write(tmp_path / "a.wav", noise(2.0), RATE)
    status, out, err = run_spot(["--ckpt", checkpoint, tmp_path / "a.wav", "--format", "jsonl"], capsys)
    assert status == 0 and out == "" and "warning" not in err  # 0.786 < 0.9
    status, out, err = run_spot(
        ["--ckpt", checkpoint, tmp_path / "a.wav", "--format", "jsonl", "--threshold", "0.7"], capsys
    )
    assert json.loads(out)["score"] == 0.7856
    status, out, err = run_spot(["--ckpt", checkpoint, tmp_path / "a.wav", "--hop_s", "0.1"], capsys)
    assert f"warning: --hop_s 0.1: {checkpoint}'s thresholds were calibrated with 0.2" in err


# --- predict on long files --------------------------------------------------------------------------
def test_predict_warns_on_a_file_far_longer_than_the_training_clips(tmp_path, capsys) -> None:
    from speechrnn.predict import main

    checkpoint = save_checkpoint(tiny_model(), tmp_path / "model.ckpt")
    sf.write(tmp_path / "long.wav", noise(6.0), RATE)
    sf.write(tmp_path / "clip.wav", noise(1.0), RATE)
    assert main(["--ckpt", str(checkpoint), str(tmp_path / "long.wav"), str(tmp_path / "clip.wav")]) == 0
    captured = capsys.readouterr()
    (warning,) = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warning.startswith(f"warning: {tmp_path / 'long.wav'}: 6.0 s long, far longer than the training clips (1 s")
    assert (
        f"speechrnn spot --ckpt {checkpoint} {tmp_path / 'long.wav'} finds" in warning
        and len(captured.out.splitlines()) == 2
    )

    recorded = save_checkpoint(tiny_model(clip_seconds=2.0), tmp_path / "recorded.ckpt")
    assert main(["--ckpt", str(recorded), str(tmp_path / "long.wav")]) == 0
    assert "warning" not in capsys.readouterr().err  # 6 s is not far longer than 2 s clips
