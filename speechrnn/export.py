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

``--streaming`` (ONNX, unidirectional audio models) exports the graph of
:class:`speechrnn.inference.StreamingWaveformClassifier` instead, which takes the audio a chunk at a
time (``--chunk_ms``, 100 ms by default) and carries the front end's left context, the recurrent
state and the pooling's running summary from call to call::

    chunk (B, chunk_samples) float32, *state  ->  probabilities (B, C), *next_state

After every chunk the probabilities are the offline graph's on all the audio so far (within
:data:`TOLERANCE`; see the class for the one exception, the 80 dB floor under a later peak). The
metadata adds ``chunk_samples``, ``inputs``/``outputs`` in order and each state's shape
(``"batch"`` where the batch goes) and dtype; every state starts at zeros.
:class:`speechrnn.streaming_onnx.OnnxStream` runs the file with onnxruntime alone. A speaker-normalised
model takes the speaker's ``mean`` and ``std`` ``(F,)`` as two more inputs, which the graph written
beside it (``NAME.enroll.onnx``) computes from recordings of the speaker.

``--quantize int8`` applies onnxruntime's dynamic quantisation (int8 weights, activations quantised
per call) to the network, offline or streaming: GRUs and LSTMs are exported as MatMul loops for it
(:class:`MatMulRNN`; onnxruntime has no quantised GRU kernel, and its LSTM one mishandles the
streaming graph's shared weights), and the front end stays float32. The float32 graph is checked against PyTorch before
quantisation; the int8 file is checked to run, and its size and difference are printed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from speechrnn.errors import ConfigError, run_entry_point
from speechrnn.inference import (
    EnrolledWaveformClassifier,
    EnrollmentStatistics,
    FeatureClassifier,
    StreamingWaveformClassifier,
    WaveformClassifier,
    batch_dim,
)
from speechrnn.io import atomic_write_bytes
from speechrnn.models.classifier import RNNClassifier
from speechrnn.models.encoder import RecurrentEncoder
from speechrnn.padding import lengths_mask

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
Quantize = Literal["none", "int8"]
DEFAULT_OPSET = 20
DEFAULT_CHUNK_MS = 100.0
"""Audio per streaming chunk: ten 10 ms hops."""
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


class MatMulRNN(nn.Module):
    """A single-layer, single-direction, batch-first GRU or LSTM (``forward(x (B, T, I), state) ->
    (outputs, state)`` as the module's) that exports as MatMul nodes: the input weights on all frames
    at once, the recurrent weights once per step. onnxruntime's dynamic quantisation has no kernel for
    the GRU operator, and shares an LSTM's weights wrongly between LSTM operators (a streaming
    graph runs each layer three times); MatMuls it quantises. The same equations: a dynamic length
    runs PyTorch's own while-loop decompositions (an ONNX Loop), a fixed one (a streaming chunk) is
    unrolled. Slower than the recurrent operators in onnxruntime (one small product per step)."""

    def __init__(self, rnn: nn.GRU | nn.LSTM) -> None:
        super().__init__()
        if rnn.num_layers != 1 or rnn.bidirectional or not rnn.bias or not rnn.batch_first or rnn.proj_size:
            raise ValueError(f"only single-layer, single-direction, batch-first GRUs and LSTMs convert, got {rnn}")
        self.rnn, self.lstm = rnn, isinstance(rnn, nn.LSTM)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        from torch.export._patches import one_layer_while_loop_gru, one_layer_while_loop_lstm

        rnn, lstm = self.rnn, self.lstm
        if state is None:  # (an LSTM's two states must not alias one another in a loop)
            state = tuple(x.new_zeros(1, x.shape[0], rnn.hidden_size) for _ in range(2 if lstm else 1))
            state = state if lstm else state[0]
        hidden, cell = (state[0][0], state[1][0]) if lstm else (state[0], None)
        weights = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
        if not isinstance(x.shape[1], int):  # a dynamic length: a loop
            if lstm:
                outputs, (hidden, cell) = one_layer_while_loop_lstm(x.transpose(0, 1), (hidden, cell), weights, True)
                return outputs.transpose(0, 1), (hidden[None], cell[None])
            outputs, hidden = one_layer_while_loop_gru(x.transpose(0, 1), hidden, weights, True)
            return outputs.transpose(0, 1), hidden[None]
        inputs = torch.matmul(x, rnn.weight_ih_l0.t()) + rnn.bias_ih_l0
        recurrent_weight = rnn.weight_hh_l0.t()
        steps = []
        for step in range(x.shape[1]):
            recurrent = torch.matmul(hidden, recurrent_weight) + rnn.bias_hh_l0
            if lstm:
                gate_in, gate_forget, candidate, gate_out = (inputs[:, step] + recurrent).chunk(4, -1)
                cell = torch.sigmoid(gate_forget) * cell + torch.sigmoid(gate_in) * torch.tanh(candidate)
                hidden = torch.sigmoid(gate_out) * torch.tanh(cell)
            else:
                reset, update, new = inputs[:, step].chunk(3, -1)
                hidden_reset, hidden_update, hidden_new = recurrent.chunk(3, -1)
                reset, update = torch.sigmoid(reset + hidden_reset), torch.sigmoid(update + hidden_update)
                hidden = (1 - update) * torch.tanh(new + reset * hidden_new) + update * hidden
            steps.append(hidden)
        return torch.stack(steps, 1), (hidden[None], cell[None]) if lstm else hidden[None]


def _for_export(model: nn.Module, onnx: bool = False, quantizable: bool = False) -> nn.Module:
    """A copy of ``model`` whose encoders take the padded path one module at a time (packing and
    the fused kernels do not export; the padded path gives the same valid outputs), with tanh RNNs
    as :func:`rnn_as_gru` GRUs for ONNX, and GRUs and LSTMs as :class:`MatMulRNN` when ``quantizable``."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, RecurrentEncoder):
            module.packed, module.fused = False, "off"
    if onnx:
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.RNN):
                    child = rnn_as_gru(child)
                    setattr(module, name, child)
                if quantizable and isinstance(child, (nn.GRU, nn.LSTM)):
                    setattr(module, name, MatMulRNN(child))
    return model


def onnx_model_bytes(model: Exportable, opset: int = DEFAULT_OPSET, quantizable: bool = False) -> bytes:
    """The serialised ONNX model of ``model`` (dynamo exporter, dynamic batch and length, metadata).

    Vanilla (tanh) RNN layers are exported as equivalent GRUs (:func:`rnn_as_gru`), and GRUs as
    :class:`MatMulRNN` loops when ``quantizable`` (for :func:`quantize_int8`).
    """
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
    return _onnx_bytes(model, example_inputs(model), dynamic_shapes, (inputs, outputs), opset, quantizable)


def _onnx_bytes(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    dynamic_shapes: Any,
    names: tuple[list[str], list[str]],
    opset: int,
    quantizable: bool = False,
) -> bytes:
    """``model`` captured with ``torch.export`` on ``example`` and translated to ONNX with ``names``
    for its inputs and outputs and its ``metadata()`` as ``metadata_props``."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"ONNX export needs onnx and onnxscript: pip install 'speechrnn[onnx]' ({error})") from None
    with _export_context():
        program = torch.export.export(
            _for_export(model, onnx=True, quantizable=quantizable),
            example,
            dynamic_shapes=dynamic_shapes,
            strict=False,
            prefer_deferred_runtime_asserts_over_guards=True,
        )
        onnx_program = torch.onnx.export(
            program,
            example,
            dynamo=True,
            opset_version=opset,
            input_names=names[0],
            output_names=names[1],
            verbose=False,
        )
    proto = onnx_program.model_proto
    _strip_debug_info(proto.graph)
    for key, value in model.metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    return proto.SerializeToString()


def verify_onnx(model_bytes: bytes, model: Exportable, tolerance: float | None = TOLERANCE) -> float:
    """Largest difference between onnxruntime and PyTorch on :func:`check_inputs`; ``RuntimeError``
    above ``tolerance`` (None: any finite difference). NaN (with a warning, nothing checked) without
    onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        warnings.warn("onnxruntime is not installed: the ONNX export was not checked", stacklevel=2)
        return float("nan")
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    inputs = check_inputs(model)
    feed = {name: value.numpy() for name, value in zip(io_names(model)[0], inputs, strict=True)}
    got = torch.from_numpy(session.run(None, feed)[0])
    return _compare(got, model, inputs, "onnxruntime", tolerance)


def _strip_debug_info(graph: Any) -> None:
    """Drop the exporter's per-node debug metadata (stack traces, module paths), of the loops' bodies
    too: most of a small model's file, and nothing onnxruntime reads."""
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _strip_debug_info(attribute.g)


def streaming_exportable(
    checkpoint_path: str | os.PathLike, chunk_ms: float = DEFAULT_CHUNK_MS
) -> StreamingWaveformClassifier:
    """:class:`StreamingWaveformClassifier` of an audio checkpoint, ``chunk_ms`` (a whole number of
    hops) per chunk; ``ValueError`` in one line for a model that cannot stream."""
    classifier = WaveformClassifier.from_model(load_checkpoint(checkpoint_path), str(checkpoint_path))
    frames = chunk_ms / classifier.settings.hop_ms
    try:
        if abs(frames - round(frames)) > 1e-6:
            raise ValueError(f"chunk_ms must be a whole number of {classifier.settings.hop_ms} ms hops, got {chunk_ms}")
        return StreamingWaveformClassifier(classifier, round(frames))
    except ValueError as error:
        raise ConfigError(f"{checkpoint_path}: {error}") from None


def streaming_onnx_bytes(
    model: StreamingWaveformClassifier, opset: int = DEFAULT_OPSET, quantizable: bool = False
) -> bytes:
    """The serialised ONNX model of a :class:`StreamingWaveformClassifier`: one chunk and the state in,
    probabilities and the next state out (names and shapes in its metadata); dynamic batch."""
    metadata = model.metadata()
    speaker = (torch.zeros(model.settings.feature_dim), torch.ones(model.settings.feature_dim))
    example = (torch.zeros(2, model.chunk_samples), *model.initial_state(2))
    example += speaker if model.normalization == "speaker" else ()
    batch = torch.export.Dim("batch", min=1)
    states = [{batch_dim(name): batch} for name in metadata["states"]]
    extra = [None] * (len(example) - 1 - len(states))
    dynamic_shapes = ({0: batch}, (*states, *extra))
    return _onnx_bytes(model, example, dynamic_shapes, (metadata["inputs"], metadata["outputs"]), opset, quantizable)


def enrollment_onnx_bytes(model: StreamingWaveformClassifier, opset: int = DEFAULT_OPSET) -> bytes:
    """The graph of a speaker-normalised streaming model's :class:`EnrollmentStatistics`:
    ``(enrollment (E, S), enrollment_lengths (E,)) -> (mean (F,), std (F,))``."""
    enrolled = torch.export.Dim("enrollment_batch", min=1)
    samples = torch.export.Dim("enrollment_samples", min=model.settings.win_length)
    dynamic_shapes = {"enrollment": {0: enrolled, 1: samples}, "enrollment_lengths": {0: enrolled}}
    names = (["enrollment", "enrollment_lengths"], ["mean", "std"])
    example = example_inputs(_offline(model), 3)
    return _onnx_bytes(EnrollmentStatistics(model), example, dynamic_shapes, names, opset)


def _offline(model: StreamingWaveformClassifier) -> WaveformClassifier:
    """The offline model a streaming one streams."""
    return WaveformClassifier(model.settings, model.feature_classifier)


def streaming_check_inputs(
    model: StreamingWaveformClassifier, batch: int = 3, chunks: int = 5
) -> tuple[torch.Tensor, ...]:
    """A seeded batch of ``chunks`` chunks of noise under a rising, row-dependent envelope, and for
    a speaker-normalised model a speaker's mean and deviation."""
    generator = torch.Generator().manual_seed(batch)
    samples = chunks * model.chunk_samples
    envelope = torch.linspace(0.05, 0.5, samples) * torch.linspace(1.0, 2.0, batch)[:, None]
    waveforms = envelope * torch.randn(batch, samples, generator=generator)
    if model.normalization != "speaker":
        return (waveforms,)
    dim = model.settings.feature_dim
    return waveforms, torch.randn(dim, generator=generator), 1 + torch.rand(dim, generator=generator)


@torch.no_grad()
def stream_in_pytorch(
    model: StreamingWaveformClassifier, waveforms: torch.Tensor, *speaker: torch.Tensor
) -> torch.Tensor:
    """``model``'s outputs after each chunk of ``waveforms (B, chunks * chunk_samples)``: ``(chunks, B, C)``."""
    state, outputs = model.initial_state(waveforms.shape[0]), []
    for chunk in waveforms.split(model.chunk_samples, dim=1):
        output, *state = model(chunk, *state, *speaker)
        outputs.append(output)
    return torch.stack(outputs)


def verify_streaming_onnx(
    model_bytes: bytes, model: StreamingWaveformClassifier, tolerance: float | None = TOLERANCE
) -> float:
    """Largest difference between the ONNX streaming graph and PyTorch, chunk after chunk, on
    :func:`streaming_check_inputs` (another batch size than the export's); as :func:`verify_onnx`."""
    try:
        from speechrnn.streaming_onnx import OnnxStream
    except ImportError:
        warnings.warn("onnxruntime is not installed: the ONNX export was not checked", stacklevel=2)
        return float("nan")
    waveforms, *speaker = streaming_check_inputs(model)
    stream = OnnxStream(model_bytes)
    if speaker:
        stream.speaker = tuple(value.numpy() for value in speaker)
    got = torch.from_numpy(stream.run(waveforms.numpy()))
    difference = float((got - stream_in_pytorch(model, waveforms, *speaker)).abs().max())
    return _check_difference(difference, "onnxruntime streaming", tuple(waveforms.shape), tolerance)


def quantize_int8(model_bytes: bytes) -> bytes:
    """``model_bytes`` with onnxruntime's dynamic int8 quantisation of the network's MatMul weights
    (:class:`MatMulRNN` loops, input projections, the head): weights stored as int8, activations
    quantised per call. Constant subgraphs are folded first whatever their size (the exporter folds
    small ones only), so that every weight is an initializer, which is what ``quantize_dynamic``
    quantises. The front end's MatMuls (mel filterbank, DCT) stay float32: the 80 dB range of
    log-mel powers does not survive 8 bits. Metadata is kept."""
    import onnx
    import onnxscript.optimizer
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load_from_string(model_bytes)
    unlimited = 1 << 40
    proto = onnxscript.optimizer.optimize(proto, input_size_limit=unlimited, output_size_limit=unlimited)
    frontend = [
        node.name
        for node in proto.graph.node
        if node.op_type == "MatMul" and any("frontend" in name.split(".") for name in node.input)
    ]
    with tempfile.TemporaryDirectory(prefix="speechrnn-int8-") as folder:
        out = Path(folder) / "int8.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            quantize_dynamic(
                proto,
                out,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=frontend,
                weight_type=QuantType.QInt8,
                extra_options={"EnableSubgraph": True},
            )
        quantized = onnx.load(str(out))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(proto.metadata_props)
    entry = quantized.metadata_props.add()
    entry.key, entry.value = "quantization", "int8 dynamic (onnxruntime quantize_dynamic: MatMul weights)"
    return quantized.SerializeToString()


def export_onnx(
    checkpoint_path: str | os.PathLike,
    out_path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    *,
    quantize: Quantize | None = None,
    streaming: bool = False,
    chunk_ms: float = DEFAULT_CHUNK_MS,
) -> Path:
    """Export a checkpoint to ONNX (see the module docstring for inputs, outputs and metadata).

    With ``verify`` the model is run with onnxruntime on a batch of another shape and compared with
    PyTorch before it is written. ``streaming``: the chunk-by-chunk graph of
    :class:`StreamingWaveformClassifier` (``chunk_ms`` per chunk), and for a speaker-normalised model
    its :class:`EnrollmentStatistics` graph beside it (``NAME.enroll.onnx``, named in the metadata).
    ``quantize="int8"``: :func:`quantize_int8` after the float graph was checked; the int8 file is
    only checked to run (its difference from PyTorch is printed with its size). Writes atomically;
    returns ``out_path``.
    """
    if quantize not in (None, "none", "int8"):
        raise ValueError(f"unknown quantization {quantize!r}; use none or int8")
    out_path = Path(out_path)
    quantizable = quantize == "int8"
    model: Exportable | StreamingWaveformClassifier
    if streaming:
        model = streaming_exportable(checkpoint_path, chunk_ms)
        data, check = streaming_onnx_bytes(model, opset, quantizable), verify_streaming_onnx
    else:
        model = exportable(checkpoint_path)
        data, check = onnx_model_bytes(model, opset, quantizable), verify_onnx
    if verify:
        check(data, model)
    if quantizable:
        float_size, data = len(data), quantize_int8(data)
        difference = check(data, model, None) if verify else float("nan")
        print(
            f"int8: {len(data) / 1e3:.1f} kB against {float_size / 1e3:.1f} kB for the same graph in float32; "
            f"largest difference from PyTorch float32 on the check inputs {difference:.3g}"
        )
    if streaming and model.normalization == "speaker":
        companion = out_path.with_name(out_path.name.removesuffix(".onnx") + ".enroll.onnx")
        data = _with_metadata(data, {"enrollment_model": companion.name})
        statistics = enrollment_onnx_bytes(model, opset)
        if verify:
            _verify_enrollment(statistics, model)
        atomic_write_bytes(companion, statistics)
    return atomic_write_bytes(out_path, data)


def _with_metadata(model_bytes: bytes, entries: dict[str, str]) -> bytes:
    import onnx

    proto = onnx.load_from_string(model_bytes)
    for key, value in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def _verify_enrollment(model_bytes: bytes, model: StreamingWaveformClassifier) -> float:
    """Largest difference between the enrollment graph and PyTorch on :func:`check_inputs`."""
    try:
        import onnxruntime
    except ImportError:
        return float("nan")
    enrollment = check_inputs(_offline(model))
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {"enrollment": enrollment[0].numpy(), "enrollment_lengths": enrollment[1].numpy()})
    with torch.no_grad():
        expected = EnrollmentStatistics(model)(*enrollment)
    difference = max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected, strict=True))
    return _check_difference(difference, "enrollment statistics", tuple(enrollment[0].shape), TOLERANCE)


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


def _compare(
    got: torch.Tensor,
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    what: str,
    tolerance: float | None = TOLERANCE,
) -> float:
    with torch.no_grad():
        expected = model(*inputs)
    return _check_difference(float((got - expected).abs().max()), what, tuple(inputs[0].shape), tolerance)


def _check_difference(difference: float, what: str, shape: tuple[int, ...], tolerance: float | None) -> float:
    """``difference``, or ``RuntimeError`` when it exceeds ``tolerance`` (None: when it is not finite)."""
    if not difference <= (float("inf") if tolerance is None else tolerance):
        raise RuntimeError(
            f"the {what} export differs from PyTorch by {difference:.3g} (> {tolerance}) on inputs of shape "
            f"{shape}, unlike the example it was exported with; not writing it"
        )
    return difference


def export(
    ckpt: Path,
    out: Path,
    format: Format = "onnx",
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    streaming: bool = False,
    chunk_ms: float = DEFAULT_CHUNK_MS,
    quantize: Quantize = "none",
) -> Path:
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
        streaming: ONNX only, unidirectional audio models: the chunk-by-chunk graph, ``(chunk (B,
            chunk_samples), *state) -> (probabilities, *next_state)``, front end inside; after every
            chunk the probabilities are the offline model's on everything heard so far. Chunk size,
            state names and shapes (all zeros to start) are in the file's metadata;
            ``speechrnn.streaming_onnx.OnnxStream`` runs it.
        chunk_ms: Milliseconds of audio per streaming chunk (a whole number of hops).
        quantize: ONNX only: ``int8`` quantises the network's weights with onnxruntime's dynamic
            quantisation (recurrent layers exported as MatMul loops for it); the file is checked to
            run and its size printed.

    Returns:
        The path written.
    """
    if format == "onnx":
        path = export_onnx(ckpt, out, opset, verify, streaming=streaming, chunk_ms=chunk_ms, quantize=quantize)
    elif streaming or quantize != "none":
        raise ConfigError("--streaming and --quantize export ONNX only: add --format onnx")
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
