"""``python -m speechrnn.export --ckpt PATH --format onnx|torchscript --out FILE``: a checkpoint as one
self-contained model file, for deployment without speechrnn.

An audio checkpoint exports as waveforms -> probabilities, with the MFCC front end and the dataset
normalisation inside the graph, so a deployment needs no Python feature code::

    waveforms (B, S) float32 at sample_rate, lengths (B,) int64 samples  ->  probabilities (B, C)

Clips shorter than the batch's widest are zero-padded after their end; each clip gets the
probabilities it gets alone, and the same as :class:`speechrnn.inference.Predictor`: the file holds
the graph of :class:`speechrnn.inference.WaveformClassifier` (or ``FeatureClassifier``). A clip
needs at least ``min_samples`` samples (one analysis window). There is no resampling: feed audio at
``sample_rate``.

A checkpoint trained with ``features.normalize='speaker'`` takes one speaker's recordings beside the
clips, whose pooled statistics normalise them (:class:`speechrnn.inference.EnrolledWaveformClassifier`)::

    waveforms (B, S), lengths (B,), enrollment (E, S'), enrollment_lengths (E,)  ->  probabilities (B, C)

A checkpoint trained on feature sequences (no audio settings) exports its network alone, with its
dataset normalisation: ``features (B, T, F) float32, lengths (B,) int64 frames -> probabilities``.
Regression checkpoints return raw ``outputs`` instead of probabilities.

Labels, sample rate and feature settings travel in the file: as ONNX ``metadata_props`` (read them
with :func:`read_onnx_metadata`) and as the extra file ``speechrnn.json`` in a TorchScript archive
(:func:`load_torchscript`). Batch size and length are dynamic in both formats. Unless ``--verify
false``, the file is run on a batch of another size and length than the one it was exported with
and compared with PyTorch before it replaces ``--out``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from speechrnn.errors import run_entry_point
from speechrnn.inference import EnrolledWaveformClassifier, FeatureClassifier, WaveformClassifier
from speechrnn.io import atomic_write_bytes
from speechrnn.models.classifier import RNNClassifier
from speechrnn.models.encoder import RecurrentEncoder
from speechrnn.padding import lengths_mask

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
DEFAULT_OPSET = 20
EXTRA_FILE = "speechrnn.json"
"""Name of the metadata file inside a TorchScript archive."""
TOLERANCE = 1e-4
"""Largest difference the post-export check accepts between the exported file and PyTorch."""
Exportable = WaveformClassifier | FeatureClassifier | EnrolledWaveformClassifier


def load_checkpoint(path: str | os.PathLike) -> RNNClassifier:
    """The checkpoint's ``RNNClassifier`` on the CPU, in eval mode."""
    return RNNClassifier.from_checkpoint(path, map_location="cpu").eval()


def exportable(checkpoint_path: str | os.PathLike) -> Exportable:
    """:class:`WaveformClassifier` for an audio checkpoint (:class:`EnrolledWaveformClassifier` when
    it normalises per speaker), :class:`FeatureClassifier` otherwise."""
    model = load_checkpoint(checkpoint_path)
    if model.data_config.get("features"):
        classifier = WaveformClassifier.from_model(model, str(checkpoint_path))
        return EnrolledWaveformClassifier(classifier) if classifier.normalization == "speaker" else classifier
    return FeatureClassifier.from_model(model)


def example_inputs(model: Exportable, batch: int = 2, width: int | None = None) -> tuple[torch.Tensor, ...]:
    """A seeded, zero-padded batch of different lengths, the last one full width (default width:
    half a second of audio, or 37 frames); for an enrolled model, an enrollment batch of another
    size and width after it."""
    if isinstance(model, EnrolledWaveformClassifier):
        clips = example_inputs(model.inner, batch, width)
        return (*clips, *example_inputs(model.inner, batch + 1, clips[0].shape[1] + 57))
    generator = torch.Generator().manual_seed(batch)
    if isinstance(model, WaveformClassifier):
        width = width or model.sample_rate // 2 + 123
        shortest = model.settings.win_length
        data = 0.1 * torch.randn(batch, width, generator=generator)
    else:
        width = width or 37
        shortest = 1
        data = torch.randn(batch, width, model.net.encoder.input_size, generator=generator)
    lengths = torch.tensor([max(shortest, width * (i + 2) // (batch + 1)) for i in range(batch)])
    lengths[-1] = width
    mask = lengths_mask(lengths, width)
    return data * (mask if data.dim() == 2 else mask.unsqueeze(-1)), lengths


def check_inputs(model: Exportable) -> tuple[torch.Tensor, ...]:
    """Inputs of another batch size and width than :func:`example_inputs`'s defaults, to check that
    an export generalises beyond the shapes it was traced with."""
    data = example_inputs(model)[0]
    return example_inputs(model, batch=3, width=data.shape[1] * 2 // 3 + 7)


def io_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Input and output names of the exported graph (the names of its ``forward``'s arguments)."""
    if isinstance(model, EnrolledWaveformClassifier):
        inputs = ["waveforms", "lengths", "enrollment", "enrollment_lengths"]
    elif isinstance(model, WaveformClassifier):
        inputs = ["waveforms", "lengths"]
    else:
        inputs = ["features", "lengths"]
    return inputs, ["probabilities" if model.task == "classification" else "outputs"]


@contextlib.contextmanager
def _export_context() -> Iterator[None]:
    """What ``torch.onnx.export`` sets up around ``torch.export`` for dynamic RNNs, minus its fallback.

    GRU/LSTM are traced as while loops over time (their default decomposition unrolls them, fixing
    the length). ``torch.onnx.export`` would answer a failed dynamic-shape check by silently
    specialising the length to the example's (the exported file then fails or misreads other
    lengths); capturing the program ourselves makes such a failure an error instead.
    """
    from torch.export._patches import register_gru_while_loop_decomposition, register_lstm_while_loop_decomposition

    with (
        register_gru_while_loop_decomposition(),
        register_lstm_while_loop_decomposition(),
        torch.fx.experimental._config.patch(backed_size_oblivious=True),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message=".*_check_is_size will be removed.*")
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        yield


def rnn_as_gru(rnn: nn.RNN) -> nn.GRU:
    """A GRU that computes what the tanh ``rnn`` computes: update gate shut, reset gate open.

    With zero gate weights and gate biases of -/+100, float32 sigmoids give z = 0 (to 1e-43) and
    r = 1, so ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``. The exporter lowers GRUs to the ONNX
    GRU operator but has no lowering for ``rnn_tanh``, whose default decomposition unrolls time.
    """
    if rnn.mode != "RNN_TANH" or rnn.proj_size or rnn.num_layers != 1 or rnn.bidirectional or not rnn.bias:
        raise ValueError(f"only single-layer, single-direction tanh RNNs with biases convert, got {rnn}")
    gru = nn.GRU(rnn.input_size, rnn.hidden_size, batch_first=rnn.batch_first)
    hidden = rnn.hidden_size
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(gru, name).zero_()
        gru.weight_ih_l0[2 * hidden :] = rnn.weight_ih_l0
        gru.weight_hh_l0[2 * hidden :] = rnn.weight_hh_l0
        gru.bias_ih_l0[:hidden] = 100.0
        gru.bias_ih_l0[hidden : 2 * hidden] = -100.0
        gru.bias_ih_l0[2 * hidden :] = rnn.bias_ih_l0
        gru.bias_hh_l0[2 * hidden :] = rnn.bias_hh_l0
    return gru.to(rnn.weight_ih_l0.device).train(rnn.training)


def _for_export(model: nn.Module, onnx: bool = False) -> nn.Module:
    """A copy of ``model`` whose encoders take the padded path one module at a time (packing and
    the fused kernels do not export; the padded path gives the same valid outputs), with tanh RNNs
    as :func:`rnn_as_gru` GRUs for ONNX."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, RecurrentEncoder):
            module.packed, module.fused = False, "off"
    if onnx:
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.RNN):
                    setattr(module, name, rnn_as_gru(child))
    return model


def onnx_model_bytes(model: Exportable, opset: int = DEFAULT_OPSET) -> bytes:
    """The serialised ONNX model of ``model`` (dynamo exporter, dynamic batch and length, metadata).

    Vanilla (tanh) RNN layers are exported as equivalent GRUs (:func:`rnn_as_gru`).
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"ONNX export needs onnx and onnxscript: pip install 'speechrnn[onnx]' ({error})") from None
    inputs, outputs = io_names(model)
    if isinstance(model, FeatureClassifier):
        time = torch.export.Dim("frames", min=1)
    else:
        time = torch.export.Dim("samples", min=model.settings.win_length)
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = {inputs[0]: {0: batch, 1: time}, inputs[1]: {0: batch}}
    if isinstance(model, EnrolledWaveformClassifier):
        enrolled = torch.export.Dim("enrollment_batch", min=1)
        samples = torch.export.Dim("enrollment_samples", min=model.settings.win_length)
        dynamic_shapes |= {inputs[2]: {0: enrolled, 1: samples}, inputs[3]: {0: enrolled}}
    example = example_inputs(model)
    with _export_context():
        program = torch.export.export(
            _for_export(model, onnx=True),
            example,
            dynamic_shapes=dynamic_shapes,
            strict=False,
            prefer_deferred_runtime_asserts_over_guards=True,
        )
        onnx_program = torch.onnx.export(
            program, example, dynamo=True, opset_version=opset, input_names=inputs, output_names=outputs, verbose=False
        )
    proto = onnx_program.model_proto
    for key, value in model.metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    return proto.SerializeToString()


def verify_onnx(model_bytes: bytes, model: Exportable) -> float:
    """Largest difference between onnxruntime and PyTorch on :func:`check_inputs`; ``RuntimeError``
    above :data:`TOLERANCE`. NaN (with a warning, nothing checked) without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        warnings.warn("onnxruntime is not installed: the ONNX export was not checked", stacklevel=2)
        return float("nan")
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    inputs = check_inputs(model)
    feed = {name: value.numpy() for name, value in zip(io_names(model)[0], inputs, strict=True)}
    got = torch.from_numpy(session.run(None, feed)[0])
    return _compare(got, model, inputs, "onnxruntime")


def export_onnx(
    checkpoint_path: str | os.PathLike, out_path: str | os.PathLike, opset: int = DEFAULT_OPSET, verify: bool = True
) -> Path:
    """Export a checkpoint to ONNX (see the module docstring for inputs, outputs and metadata).

    With ``verify`` the model is run with onnxruntime on a batch of another shape and compared with
    PyTorch before it is written. Writes atomically; returns ``out_path``.
    """
    model = exportable(checkpoint_path)
    data = onnx_model_bytes(model, opset)
    if verify:
        verify_onnx(data, model)
    return atomic_write_bytes(out_path, data)


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """An exported ONNX file's ``metadata_props``, JSON values decoded (``class_names`` a list,
    ``sample_rate`` an int, ...)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {entry.key: _decode(entry.value) for entry in model.metadata_props}


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence torch 2.14's FutureWarnings that ``torch.jit`` is deprecated (it still works)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def trace(model: Exportable) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of ``model``. Shape arithmetic is recorded, so the trace takes any batch
    size and length (the model has no data-dependent control flow); :func:`export_torchscript`
    checks that on inputs of another shape."""
    with torch.no_grad(), _quiet_jit():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # RNN input checks, fixed sizes only
        return torch.jit.trace(_for_export(model), example_inputs(model), check_trace=False)


def export_torchscript(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike, verify: bool = True) -> Path:
    """Export a checkpoint to TorchScript with the metadata as the extra file ``speechrnn.json``.

    With ``verify`` the traced module is run on a batch of another shape and compared with the
    eager model before it is written. Writes atomically; returns ``out_path``.
    """
    model = exportable(checkpoint_path)
    traced = trace(model)
    if verify:
        inputs = check_inputs(model)
        with torch.no_grad():
            _compare(traced(*inputs), model, inputs, "TorchScript")
    buffer = io.BytesIO()
    with _quiet_jit():
        torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: json.dumps(model.metadata())})
    return atomic_write_bytes(out_path, buffer.getvalue())


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """An exported TorchScript module (on the CPU) and its metadata."""
    extra = {EXTRA_FILE: ""}
    with _quiet_jit():
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra[EXTRA_FILE])


def _compare(got: torch.Tensor, model: nn.Module, inputs: tuple[torch.Tensor, ...], what: str) -> float:
    with torch.no_grad():
        expected = model(*inputs)
    difference = float((got - expected).abs().max())
    if not difference <= TOLERANCE:
        raise RuntimeError(
            f"the {what} export differs from PyTorch by {difference:.3g} (> {TOLERANCE}) on inputs of shape "
            f"{tuple(inputs[0].shape)}, unlike the example it was exported with; not writing it"
        )
    return difference


def export(ckpt: Path, out: Path, format: Format = "onnx", opset: int = DEFAULT_OPSET, verify: bool = True) -> Path:
    """Export a checkpoint as a self-contained ONNX or TorchScript model.

    Audio checkpoints become ``(waveforms (B, S) float32, lengths (B,) int64 samples) ->
    probabilities (B, C)`` with the MFCC front end inside; feature-sequence checkpoints become
    ``(features (B, T, F), lengths (B,) int64 frames) -> probabilities``. Class names and sample
    rate are stored in the file.

    Args:
        ckpt: Checkpoint written by ``python -m speechrnn.fit``.
        out: Model file to write (replaced atomically; folders are created).
        format: ``onnx`` (torch.onnx dynamo exporter) or ``torchscript`` (torch.jit.trace).
        opset: ONNX opset version (ONNX only).
        verify: Run the exported model on a batch of another size and length and compare it with
            PyTorch before writing (ONNX needs onnxruntime for this).

    Returns:
        The path written.
    """
    if format == "onnx":
        path = export_onnx(ckpt, out, opset, verify)
    elif format == "torchscript":
        path = export_torchscript(ckpt, out, verify)
    else:
        raise ValueError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    print(f"wrote {path}")
    return path


def main(args: list[str] | None = None) -> None:
    from speechrnn.cli import run_function

    run_function("export", export, args)


if __name__ == "__main__":
    run_entry_point(main)
