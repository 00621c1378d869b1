"""Run an exported streaming model (``speechrnn export --format onnx --streaming``) chunk by chunk
with onnxruntime, from its metadata alone: no PyTorch and no speechrnn model code.

>>> stream = OnnxStream("kws.onnx")  # audio: float32 at stream.sample_rate
>>> for start in range(0, len(audio) - stream.chunk_samples + 1, stream.chunk_samples):
...     probabilities = stream.push(audio[start : start + stream.chunk_samples])  # (1, classes)
>>> stream.reset()  # a new utterance

After every chunk the probabilities are the offline model's on all the audio pushed since the reset.

The graph's inputs are ``chunk (B, chunk_samples)``, the state tensors named in its ``states``
metadata (all zeros before the first chunk) and, for a speaker-normalised model, the speaker's
``mean`` and ``std`` ``(F,)``; its outputs are the probabilities and ``next_<state>`` for each state,
which the next call takes. A speaker-normalised model's ``NAME.enroll.onnx`` beside it computes
the speaker's statistics from recordings (:meth:`OnnxStream.enroll`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

DTYPES = {"float32": np.float32, "int64": np.int64}


def session(model: str | os.PathLike | bytes, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A CPU onnxruntime session of a model file or its bytes; ``threads``: intra-op threads (all
    cores when None)."""
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def metadata_of(model: onnxruntime.InferenceSession) -> dict[str, Any]:
    """A session's model metadata, JSON values decoded."""
    decoded = {}
    for key, value in model.get_modelmeta().custom_metadata_map.items():
        try:
            decoded[key] = json.loads(value)
        except json.JSONDecodeError:
            decoded[key] = value
    return decoded


class OnnxStream:
    """An exported streaming model and its state: :meth:`push` one chunk after another.

    ``model``: the ``.onnx`` file (or its bytes; then a speaker-normalised model's enrollment graph
    is not found and ``speaker`` must be set by hand). ``threads``: onnxruntime intra-op threads.
    """

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None) -> None:
        self.session = session(model, threads)
        self.metadata = metadata_of(self.session)
        if self.metadata.get("input") != "waveform_stream":
            raise ValueError(f"{model if not isinstance(model, bytes) else 'the model'} is not a streaming export")
        self.chunk_samples: int = self.metadata["chunk_samples"]
        self.sample_rate: int = self.metadata["sample_rate"]
        self.class_names: list[str] = self.metadata["class_names"]
        self.states: dict[str, list[int | str]] = self.metadata["states"]
        self.needs_speaker = self.metadata.get("normalization") == "speaker"
        self.speaker: tuple[np.ndarray, np.ndarray] | None = None
        """A speaker-normalised model's ``(mean, std)`` ``(F,)``: :meth:`enroll` sets it."""
        self.enrollment: onnxruntime.InferenceSession | None = None
        companion = self.metadata.get("enrollment_model")
        if companion and not isinstance(model, bytes):
            self.enrollment = session(Path(model).with_name(companion), threads)
        self.reset()

    def reset(self, batch: int = 1) -> None:
        """Start new utterances (``batch`` of them, pushed together); the speaker is kept."""
        dtypes = self.metadata["state_dtypes"]
        self.state = {
            name: np.zeros([batch if size == "batch" else size for size in shape], DTYPES[dtypes[name]])
            for name, shape in self.states.items()
        }

    def enroll(self, recordings: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Set (and return) the speaker statistics from that speaker's recordings (1-D float32 at
        ``sample_rate``, each at least one analysis window), through the enrollment graph."""
        if self.enrollment is None:
            raise ValueError("no enrollment graph: the model does not normalise per speaker, or was loaded from bytes")
        width = max(len(r) for r in recordings)
        batch = np.zeros((len(recordings), width), np.float32)
        for row, recording in enumerate(recordings):
            batch[row, : len(recording)] = recording
        lengths = np.array([len(r) for r in recordings], np.int64)
        mean, std = self.enrollment.run(None, {"enrollment": batch, "enrollment_lengths": lengths})
        self.speaker = (mean, std)
        return mean, std

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Consume one chunk, ``(chunk_samples,)`` or ``(B, chunk_samples)`` float32 (the batch of
        :meth:`reset`); returns the probabilities ``(B, C)`` for everything pushed since the reset."""
        chunk = np.asarray(chunk, np.float32)
        if chunk.ndim == 1:
            chunk = chunk[None]
        if chunk.shape[1] != self.chunk_samples:
            raise ValueError(f"a chunk is {self.chunk_samples} samples, got {chunk.shape[1]}")
        feed = {"chunk": chunk, **self.state}
        if self.needs_speaker:
            if self.speaker is None:
                raise ValueError("this model normalises per speaker: call enroll(recordings) or set speaker first")
            feed |= {"mean": self.speaker[0], "std": self.speaker[1]}
        output, *state = self.session.run(None, feed)
        self.state = dict(zip(self.states, state, strict=True))
        return output

    def run(self, waveforms: np.ndarray) -> np.ndarray:
        """A new utterance, ``(S,)`` or ``(B, S)``, chunk by chunk: the probabilities after every
        chunk, ``(chunks, B, C)``. The end is zero-padded to a whole chunk (the offline model then
        hears those zeros too)."""
        waveforms = np.asarray(waveforms, np.float32)
        if waveforms.ndim == 1:
            waveforms = waveforms[None]
        chunks = -(-waveforms.shape[1] // self.chunk_samples)
        padded = np.zeros((waveforms.shape[0], chunks * self.chunk_samples), np.float32)
        padded[:, : waveforms.shape[1]] = waveforms
        self.reset(waveforms.shape[0])
        return np.stack([self.push(chunk) for chunk in np.split(padded, chunks, axis=1)])


__all__ = ["OnnxStream", "metadata_of", "session"]
