"""Streaming export (issue 29): chunk after chunk, the streamed graph gives the offline model's
probabilities on everything heard so far; int8 models load and stay close to float.

Tolerances: the streamed graph computes the offline frames with the same arithmetic, so PyTorch
streaming and offline differ only by float rounding in a different order (running pooling sums,
shorter STFT buffers): ``STREAM_ATOL`` = 1e-5 on probabilities (1e-7 is typical). onnxruntime's
kernels are not PyTorch's: ``speechrnn.export.TOLERANCE`` = 1e-4, as for the offline export (1e-6
typical). int8 (dynamic quantisation: weights to 8 bits, activations per call) is a different model
with errors of a few 1e-3 on these tiny ones: ``INT8_ATOL`` = 0.05.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from speechrnn.errors import reported_errors
from speechrnn.export import TOLERANCE, export, export_onnx, main, read_onnx_metadata, stream_in_pytorch
from speechrnn.features import FeatureSettings
from speechrnn.inference import (
    EnrollmentStatistics,
    FeatureClassifier,
    StreamingWaveformClassifier,
    WaveformClassifier,
)
from speechrnn.models.classifier import RNNClassifier
from speechrnn.models.network import SequenceClassifierNet

CLASSES = ["down", "flat", "up"]
STREAM_ATOL = 1e-5
INT8_ATOL = 0.05
CASES = {
    "gru-mean-deltas2-dataset-16k": ("gru", "mean", 2, "dataset", 16000),
    "lstm-attention-deltas1-speaker-16k": ("lstm", "attention", 1, "speaker", 16000),
    "rnn-max-deltas0-none-8k": ("rnn", "max", 0, "none", 8000),
    "gru-last-deltas2-speaker-8k": ("gru", "last", 2, "speaker", 8000),
}


def tiny_model(cell: str, pooling: str, deltas: int, normalization: str, rate: int, sharp: float = 3.0):
    """A seeded two-layer unidirectional network of 8 units behind the front end; ``sharp`` scales
    its head so that its probabilities are far from uniform and differences show."""
    torch.manual_seed(0)
    settings = FeatureSettings(sample_rate=rate, deltas=deltas, normalize=normalization)
    dim = settings.feature_dim
    net = SequenceClassifierNet(dim, len(CLASSES), cell, 8, 2, False, 0.0, pooling, input_norm=True)
    with torch.no_grad():
        net.head.weight.mul_(sharp)
    statistics = [torch.randn(dim).tolist(), (torch.rand(dim) + 0.5).tolist()] if normalization == "dataset" else []
    return WaveformClassifier(settings, FeatureClassifier(net, CLASSES, *statistics, normalization=normalization))


def speech_like(batch: int, samples: int, rate: int, seed: int = 1) -> torch.Tensor:
    """Noise through a rising envelope plus a chirp per row (different in each row)."""
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(samples) / rate
    rows = torch.arange(1, batch + 1)[:, None]
    chirp = torch.sin(2 * torch.pi * (200 * rows + 300 * time) * time)
    return (0.05 + time / time[-1]) * (0.1 * torch.randn(batch, samples, generator=generator) + 0.3 * chirp)


def speaker_statistics(model: WaveformClassifier, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """A speaker's statistics from two recordings of its own, for a speaker-normalised model."""
    if model.normalization != "speaker":
        return ()
    enrollment = speech_like(batch, model.sample_rate // 2, model.sample_rate, seed=5)
    with torch.no_grad():
        return EnrollmentStatistics(model)(enrollment, torch.full((batch,), enrollment.shape[1]))


@torch.no_grad()
def offline_on_prefixes(model: WaveformClassifier, waveforms: torch.Tensor, chunk: int, *speaker) -> torch.Tensor:
    """The offline model on the first 1, 2, ... chunks of every row: ``(chunks, B, C)``."""
    outputs = []
    for end in range(chunk, waveforms.shape[1] + 1, chunk):
        lengths = torch.full((waveforms.shape[0],), end)
        outputs.append(model(waveforms[:, :end], lengths, *speaker))
    return torch.stack(outputs)


def write_checkpoint(path: Path, model: WaveformClassifier, bidirectional: bool = False) -> Path:
    """``model`` (its settings and sizes; fresh weights) as a checkpoint ``speechrnn export`` reads."""
    net = model.classifier.net
    encoder = net.encoder
    classifier = RNNClassifier(
        input_size=encoder.input_size,
        num_classes=len(CLASSES),
        class_names=CLASSES,
        cell=encoder.cell,
        hidden_size=encoder.hidden_size,
        num_layers=encoder.num_layers,
        bidirectional=bidirectional,
        pooling=net.pooling.mode,
    )
    data_config = {"class_names": CLASSES, "features": model.settings.to_dict()}
    if model.normalization == "dataset":
        data_config |= {"feature_mean": model.classifier.mean.tolist(), "feature_std": model.classifier.std.tolist()}
    checkpoint = {
        "state_dict": classifier.state_dict(),
        "hyper_parameters": dict(classifier.hparams),
        "data_config": data_config,
        "pytorch-lightning_version": pl.__version__,
    }
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("case", CASES)
def test_streaming_equals_offline_on_every_prefix(case: str) -> None:
    """Per chunk, the streamed probabilities are the offline model's on the audio so far: cells,
    poolings, orders of deltas, normalisations and rates."""
    model = tiny_model(*CASES[case])
    stream = StreamingWaveformClassifier(model, chunk_frames=7)
    waveforms = speech_like(2, 6 * stream.chunk_samples, model.sample_rate)
    speaker = speaker_statistics(model)
    got = stream_in_pytorch(stream, waveforms, *speaker)
    expected = offline_on_prefixes(model, waveforms, stream.chunk_samples, *speaker)
    assert (expected[1:] - expected[:-1]).abs().max() > 1e-3, "outputs that ignore the audio check nothing"
    torch.testing.assert_close(got, expected, rtol=0, atol=STREAM_ATOL)


def test_the_80_db_floor_under_a_later_peak_is_the_one_difference() -> None:
    """Near-silence, then a loud sound: offline floors the quiet bins 80 dB below the loud sound's
    peak, the stream (which has not heard it yet) below the quiet part's own; without the floor the
    two are equal again (on the Speech Commands test clips too: 4e-7 against 0.25)."""
    model = tiny_model(*CASES["gru-mean-deltas2-dataset-16k"])
    stream = StreamingWaveformClassifier(model, chunk_frames=10)
    waveforms = speech_like(1, 6 * 1600, 16000)
    waveforms[:, :3200] *= 1e-5
    differences = []
    for floor in (model.frontend.top_db, float("inf")):
        model.frontend.top_db = floor
        got, expected = stream_in_pytorch(stream, waveforms), offline_on_prefixes(model, waveforms, 1600)
        differences.append(float((got - expected).abs().max()))
    assert differences[0] > 100 * STREAM_ATOL and differences[1] < STREAM_ATOL


def test_a_batch_streams_each_row_as_alone_and_the_state_restarts_at_zero() -> None:
    model = tiny_model(*CASES["gru-mean-deltas2-dataset-16k"])
    stream = StreamingWaveformClassifier(model, chunk_frames=10)
    waveforms = speech_like(3, 4 * stream.chunk_samples, model.sample_rate)
    together = stream_in_pytorch(stream, waveforms)
    alone = stream_in_pytorch(stream, waveforms[1:2])
    torch.testing.assert_close(together[:, 1:2], alone, rtol=0, atol=STREAM_ATOL)
    again = stream_in_pytorch(stream, waveforms[1:2])
    torch.testing.assert_close(again, alone, rtol=0, atol=0)


def test_state_shapes_and_metadata() -> None:
    model = tiny_model("lstm", "attention", 2, "speaker", 16000)
    stream = StreamingWaveformClassifier(model, chunk_frames=10)
    specs = {name: (shape, dtype) for name, shape, dtype in stream.state_specs(batch=3)}
    assert specs == {
        "context": ((3, 416), torch.float32),  # 256 samples of reflection + one 160-sample hop
        "peak": ((3,), torch.float32),
        "history": ((3, 2, 4, 13), torch.float32),  # per order of deltas, the last 4 frames of 13 cepstra
        "hidden": ((2, 3, 8), torch.float32),
        "cell": ((2, 3, 8), torch.float32),
        "pooled": ((3, 8), torch.float32),
        "scores": ((3, 2), torch.float32),
        "frames": ((3,), torch.int64),
    }
    metadata = stream.metadata()
    assert metadata["chunk_samples"] == 1600 and metadata["sample_rate"] == 16000
    assert metadata["class_names"] == CLASSES and metadata["normalization"] == "speaker"
    assert metadata["states"]["hidden"] == [2, "batch", 8] and metadata["states"]["context"] == ["batch", 416]
    assert metadata["inputs"] == ["chunk", *specs, "mean", "std"]
    assert metadata["outputs"] == ["probabilities", *(f"next_{name}" for name in specs)]
    # frames recomputed each call: one cut-off STFT window and two frames per order of deltas (and the last)
    assert stream.delay_frames == 5
    outputs = stream(torch.zeros(3, 1600), *stream.initial_state(3), *speaker_statistics(model))
    assert outputs[0].shape == (3, len(CLASSES))
    assert [tuple(o.shape) for o in outputs[1:]] == [shape for shape, _ in specs.values()]

    last = StreamingWaveformClassifier(tiny_model("gru", "last", 0, "none", 8000), chunk_frames=10)
    assert [name for name, _, _ in last.state_specs()] == ["context", "peak", "hidden", "frames"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bidirectional": True}, "bidirectional models cannot stream"),
        ({"normalization": "utterance"}, "normalises each clip with its own statistics"),
        ({"per_step": True}, "per-step outputs"),
        ({"chunk_frames": 5}, r"chunk_frames must be >= 6 \(960 samples\)"),
    ],
)
def test_models_that_cannot_stream_are_refused(change: dict, message: str) -> None:
    settings = FeatureSettings(sample_rate=16000, normalize=change.get("normalization", "none"))
    net = SequenceClassifierNet(
        settings.feature_dim,
        3,
        hidden_size=4,
        bidirectional=change.get("bidirectional", False),
        per_step=change.get("per_step", False),
    )
    model = WaveformClassifier(settings, FeatureClassifier(net, CLASSES, normalization=settings.normalize))
    with pytest.raises(ValueError, match=message):
        StreamingWaveformClassifier(model, chunk_frames=change.get("chunk_frames", 10))


def test_export_refuses_a_bidirectional_checkpoint_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = write_checkpoint(tmp_path / "bi.ckpt", tiny_model("gru", "mean", 2, "none", 16000), bidirectional=True)
    out = tmp_path / "stream.onnx"
    with pytest.raises(SystemExit) as exit_info, reported_errors():
        main(["--ckpt", str(checkpoint), "--out", str(out), "--streaming", "true"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "bidirectional models cannot stream" in error and str(checkpoint) in error
    with pytest.raises(ValueError, match="export ONNX only"):
        export(checkpoint, tmp_path / "model.pt", format="torchscript", quantize="int8")
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.pt"))


@pytest.mark.slow
def test_streamed_onnx_equals_offline_pytorch_chunk_after_chunk(tmp_path: Path) -> None:
    """A speaker-normalised LSTM checkpoint: the streaming file, its enrollment graph and the
    metadata a caller needs; per chunk, the offline PyTorch model on the prefix (``TOLERANCE``)."""
    pytest.importorskip("onnxruntime")
    from speechrnn.streaming_onnx import OnnxStream

    model = tiny_model(*CASES["lstm-attention-deltas1-speaker-16k"])
    checkpoint = write_checkpoint(tmp_path / "lstm.ckpt", model)
    out = export_onnx(checkpoint, tmp_path / "stream.onnx", streaming=True, chunk_ms=80)
    metadata = read_onnx_metadata(out)
    assert metadata["chunk_samples"] == 1280 and metadata["sample_rate"] == 16000
    assert metadata["class_names"] == CLASSES and metadata["input"] == "waveform_stream"
    assert metadata["states"]["cell"] == [2, "batch", 8] and metadata["enrollment_model"] == "stream.enroll.onnx"
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["stream.enroll.onnx", "stream.onnx"]

    loaded = WaveformClassifier.from_checkpoint(checkpoint)
    stream = OnnxStream(out)
    enrollment = speech_like(2, 8000, 16000, seed=5)
    mean, std = stream.enroll(list(enrollment.numpy()))
    expected_statistics = speaker_statistics(loaded)
    torch.testing.assert_close(torch.from_numpy(mean), expected_statistics[0], rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(torch.from_numpy(std), expected_statistics[1], rtol=0, atol=TOLERANCE)

    waveforms = speech_like(2, 7 * 1280, 16000)
    got = torch.from_numpy(stream.run(waveforms.numpy()))
    expected = offline_on_prefixes(loaded, waveforms, 1280, *expected_statistics)
    assert got.shape == (7, 2, len(CLASSES))
    torch.testing.assert_close(got, expected, rtol=0, atol=TOLERANCE)
    with pytest.raises(ValueError, match="a chunk is 1280 samples"):
        stream.push(np.zeros(1000, np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_int8_models_load_and_stay_close_to_float(cell: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Recurrent weights are quantised (MatMul loops), the front end's MatMuls are not; offline and
    streaming int8 files run and give the float model's probabilities within ``INT8_ATOL``."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from speechrnn.streaming_onnx import OnnxStream

    checkpoint = write_checkpoint(tmp_path / f"{cell}.ckpt", tiny_model(cell, "mean", 2, "dataset", 16000))
    float_model = WaveformClassifier.from_checkpoint(checkpoint)
    offline = export_onnx(checkpoint, tmp_path / "offline.onnx", quantize="int8")
    streaming = export_onnx(checkpoint, tmp_path / "stream.onnx", streaming=True, quantize="int8")
    assert "int8:" in capsys.readouterr().out
    for path in (offline, streaming):
        proto = onnx.load(str(path))
        kinds = [node.op_type for node in proto.graph.node]
        assert "MatMulInteger" in kinds or "DynamicQuantizeMatMul" in kinds
        assert not {"GRU", "LSTM"} & set(kinds), "recurrent operators are not (well) quantised by onnxruntime"
        constants = {"frontend.dct", "frontend.melspectrogram.mel_scale.fb"}
        assert {node.op_type for node in proto.graph.node if constants & set(node.input)} == {"MatMul"}
        assert read_onnx_metadata(path)["quantization"].startswith("int8")

    waveforms = speech_like(2, 16000, 16000)
    lengths = torch.tensor([16000, 9000])
    session = onnxruntime.InferenceSession(str(offline), providers=["CPUExecutionProvider"])
    got = session.run(None, {"waveforms": waveforms.numpy(), "lengths": lengths.numpy()})[0]
    with torch.no_grad():
        expected = float_model(waveforms, lengths)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=INT8_ATOL)

    streamed = torch.from_numpy(OnnxStream(streaming).run(waveforms.numpy()))
    torch.testing.assert_close(streamed, offline_on_prefixes(float_model, waveforms, 1600), rtol=0, atol=INT8_ATOL)
