"""``speechrnn.export``: ONNX and TorchScript files give the probabilities PyTorch and ``Predictor`` give.

Each exported file runs on a padded batch of another size and length than the one it was exported
with, so dynamic shapes are checked, and every clip must match ``Predictor`` on that clip alone.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from speechrnn.export import (
    export,
    export_onnx,
    export_torchscript,
    exportable,
    load_torchscript,
    main,
    read_onnx_metadata,
    rnn_as_gru,
    trace,
)
from speechrnn.features import FeatureSettings, MFCCFrontend
from speechrnn.fit import main as fit
from speechrnn.inference import FeatureClassifier, Predictor, WaveformClassifier
from speechrnn.models.network import SequenceClassifierNet
from tests.conftest import chirp, write_corpus
from tests.test_cli import fit_args

CLASSES = ["down", "flat", "up"]
CELLS = {"gru": [], "lstm": ["--model.cell", "lstm", "--model.bidirectional", "false", "--model.num_layers", "1"]}
ATOL = 1e-4


@pytest.fixture(scope="module")
def help_process() -> Iterator[subprocess.Popen]:
    """``python -m speechrnn.export --help``, started before the checkpoints train so that its
    imports overlap with training."""
    command = [sys.executable, "-m", "speechrnn.export", "--help"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, help_process: subprocess.Popen) -> dict[str, Path]:
    """One-epoch checkpoints: a two-layer bidirectional GRU (the default) and a one-layer unidirectional LSTM."""
    root = tmp_path_factory.mktemp("export")
    manifest = write_corpus(root / "corpus", speakers=6, per_class=2, stereo_every=3)
    paths = {}
    for cell, extra in CELLS.items():
        runs = [
            "--trainer.max_epochs",
            "1",
            "--trainer.num_sanity_val_steps",
            "0",
            "--data.features.normalize",
            "utterance",
        ]
        runs += ["--trainer.default_root_dir", str(root / cell)]
        fit(fit_args(manifest, root, *runs, *extra))
        paths[cell] = root / cell / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    return paths


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two chirps of different lengths (neither the export example's), zero-padded to the longer."""
    rng = np.random.default_rng(7)
    clips = [chirp("up", 0.37, 16000, rng), chirp("down", 0.23, 16000, rng)]
    waveforms = torch.zeros(len(clips), max(map(len, clips)))
    for row, clip in enumerate(clips):
        waveforms[row, : len(clip)] = torch.from_numpy(clip)
    return waveforms, torch.tensor([len(clip) for clip in clips])


def reference(checkpoint: Path, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """PyTorch's probabilities for the batch, checked against ``Predictor`` on each clip alone."""
    model = WaveformClassifier.from_checkpoint(checkpoint)
    with torch.no_grad():
        batched = model(waveforms, lengths)
    predictor = Predictor.from_checkpoint(checkpoint)
    assert predictor.normalization == model.normalization == "utterance"
    clips = [wave[:n].numpy() for wave, n in zip(waveforms, lengths, strict=True)]
    alone = torch.stack([predictor.probabilities(clip, 16000) for clip in clips])
    torch.testing.assert_close(batched, alone, rtol=0, atol=ATOL)
    return batched


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_onnx_matches_pytorch_and_predictor(checkpoints: dict[str, Path], cell: str, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = export_onnx(checkpoints[cell], tmp_path / "model.onnx")
    metadata = read_onnx_metadata(out)
    assert metadata["class_names"] == CLASSES
    assert metadata["sample_rate"] == 16000 and metadata["input"] == "waveform"

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["waveforms", "lengths"]
    assert all(isinstance(dim, str) for dim in session.get_inputs()[0].shape), "batch and samples must be dynamic"
    waveforms, lengths = padded_batch()
    got = session.run(None, {"waveforms": waveforms.numpy(), "lengths": lengths.numpy()})[0]
    expected = reference(checkpoints[cell], waveforms, lengths)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=ATOL)
    assert got.sum(-1) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_torchscript_matches_pytorch_and_predictor(checkpoints: dict[str, Path], cell: str, tmp_path: Path) -> None:
    out = export_torchscript(checkpoints[cell], tmp_path / "model.pt")
    module, metadata = load_torchscript(out)
    assert metadata["class_names"] == CLASSES and metadata["sample_rate"] == 16000
    waveforms, lengths = padded_batch()
    with torch.no_grad():
        got = module(waveforms, lengths)
    torch.testing.assert_close(got, reference(checkpoints[cell], waveforms, lengths), rtol=0, atol=ATOL)
    with torch.no_grad():
        single = module(waveforms[1:, : lengths[1]], lengths[1:])
    torch.testing.assert_close(single[0], got[1], rtol=0, atol=ATOL)


def test_cli_help_and_export(checkpoints: dict[str, Path], help_process: subprocess.Popen, tmp_path: Path) -> None:
    stdout, stderr = help_process.communicate(timeout=120)
    assert help_process.returncode == 0, stderr
    for option in ("--ckpt", "--format", "--out", "--opset", "--verify", "--streaming", "--chunk_ms", "--quantize"):
        assert option in stdout

    out = tmp_path / "nested" / "model.pt"
    main(["--ckpt", str(checkpoints["lstm"]), "--format", "torchscript", "--out", str(out)])
    assert load_torchscript(out)[1]["class_names"] == CLASSES
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"], "no temporary file is left behind"


def test_unknown_format_is_rejected(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export(checkpoints["lstm"], tmp_path / "model.tflite", format="tflite")  # type: ignore[arg-type]
    assert not (tmp_path / "model.tflite").exists()


def test_feature_sequence_checkpoint_exports_the_network(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """Without audio settings the export takes features (B, T, F) and frame lengths."""
    checkpoint = torch.load(checkpoints["lstm"], map_location="cpu", weights_only=False)
    dim = checkpoint["hyper_parameters"]["input_size"]
    checkpoint["data_config"].update(features=None, feature_mean=[0.5] * dim, feature_std=[2.0] * dim)
    path = tmp_path / "features.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="no audio feature settings"):
        WaveformClassifier.from_checkpoint(path)
    model = exportable(path)
    assert isinstance(model, FeatureClassifier) and model.normalization == "dataset"

    module, metadata = load_torchscript(export_torchscript(path, tmp_path / "features.pt"))
    assert metadata == {"class_names": CLASSES, "task": "classification", "input": "features", "feature_dim": dim}
    features, lengths = torch.randn(3, 29, dim), torch.tensor([29, 4, 17])
    with torch.no_grad():
        got, expected = module(features, lengths), model(features, lengths)
        alone = model(features[1:2, :4], lengths[1:2])
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(got[1:2], alone, rtol=0, atol=ATOL)


def test_the_deployable_graph_loads_nothing_of_the_training_data_layer() -> None:
    code = "import sys, speechrnn.export; print(sorted(m for m in sys.modules if m.startswith('speechrnn.data')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_deltas_dataset_statistics_and_vanilla_rnn_trace_like_the_front_end() -> None:
    """Settings the trained checkpoints do not use: deltas, dataset normalisation, a tanh RNN with
    attention pooling at 8 kHz; the front end and network run as in training (per clip)."""
    torch.manual_seed(0)
    settings = FeatureSettings(sample_rate=8000, n_mfcc=13, n_mels=30, deltas=2, normalize="dataset")
    net = SequenceClassifierNet(settings.feature_dim, 4, "rnn", 8, 2, True, 0.0, "attention", True, packed=True)
    with torch.no_grad():
        net.head.weight.mul_(10)
    mean, std = torch.randn(settings.feature_dim), torch.rand(settings.feature_dim) + 0.5
    model = WaveformClassifier(settings, FeatureClassifier(net, list("abcd"), mean.tolist(), std.tolist()))
    traced = trace(model)
    lengths = torch.tensor([5000, 901, 3333])
    waveforms = 0.2 * torch.randn(3, 5000) * (torch.arange(5000) < lengths[:, None])
    with torch.no_grad():
        got = traced(waveforms, lengths)
        frontend = MFCCFrontend(settings)
        expected = []
        for wave, n in zip(waveforms, lengths, strict=True):
            features, frames = frontend(wave[None, :n])
            expected.append(net.eval()((features - mean) / std, frames).softmax(-1)[0])
    torch.testing.assert_close(got, torch.stack(expected), rtol=0, atol=ATOL)

    rnn = torch.nn.RNN(5, 4, batch_first=True)
    sequence = torch.randn(2, 30, 5)
    torch.testing.assert_close(rnn_as_gru(rnn)(sequence)[0], rnn(sequence)[0], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_vanilla_rnn_network_exports_to_onnx_as_equivalent_gru() -> None:
    """Stacked bidirectional tanh RNNs are rewritten as GRUs for ONNX; onnxruntime must agree with
    the original on another batch size and length than the export's example."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from speechrnn.export import onnx_model_bytes

    torch.manual_seed(0)
    net = SequenceClassifierNet(12, 3, "rnn", 8, 2, True, 0.0, "mean", False)
    model = FeatureClassifier(net, ["a", "b", "c"], [0.0] * 12, [1.0] * 12)
    session = onnxruntime.InferenceSession(onnx_model_bytes(model), providers=["CPUExecutionProvider"])
    features, lengths = torch.randn(5, 37, 12), torch.tensor([37, 3, 20, 1, 36])
    got = session.run(None, {"features": features.numpy(), "lengths": lengths.numpy()})[0]
    with torch.no_grad():
        expected = model(features, lengths)
    assert any(isinstance(m, torch.nn.RNN) for m in model.modules()), "the original keeps its RNNs"
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=ATOL)
