"""From a checkpoint to probabilities: the one inference graph that :class:`Predictor` runs and
``export`` writes, with exactly the feature settings and statistics the model was trained on.

- :class:`FeatureClassifier`: dataset (or speaker) normalisation, network, output activation;
  ``(features (B, T, F), lengths (B,) frames) -> (B, C)``.
- :class:`WaveformClassifier`: the MFCC front end before it;
  ``(waveforms (B, S) at sample_rate, lengths (B,) samples) -> (B, C)``. Every stage is masked by
  the lengths, so each clip of a zero-padded batch gets what it gets alone.
- :class:`StreamingWaveformClassifier`: :class:`WaveformClassifier` a chunk of samples at a time, the
  state carried between calls (unidirectional networks); after every chunk, the offline probabilities
  of the audio so far. :class:`EnrollmentStatistics`: a speaker's statistics from recordings.
- :class:`Predictor`: files and waveforms of any rate and channel count -> label probabilities.

Each says how it normalises in ``normalization`` (:mod:`speechrnn.normalization`): a ``speaker``
model takes the speaker's statistics with every call. Nothing here needs a DataModule; a DataModule's
split through a model is :mod:`speechrnn.split_predictions`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from speechrnn.audio_io import AudioError, read_audio, resample, to_mono
from speechrnn.features import FeatureSettings, MFCCFrontend
from speechrnn.models.classifier import RNNClassifier, output_activation
from speechrnn.models.network import SequenceClassifierNet
from speechrnn.normalization import FrameMoments, Normalization, normalization_of, pooled_moments, standardize

SpeakerStatistics = tuple[Tensor, Tensor]
"""A speaker's feature mean and deviation, ``(F,)`` each."""


class FeatureClassifier(nn.Module):
    """A network with its dataset normalisation and output activation, in eval mode:
    ``forward(features (B, T, F) float32, lengths (B,) int64 frames) -> (B, num_outputs)``.

    Softmax probabilities for classification, raw outputs for regression. Checkpoints trained on
    feature sequences export as this; :class:`WaveformClassifier` puts the MFCC front end before it.
    A model with ``normalization='speaker'`` takes each clip's speaker statistics (``mean``, ``std``:
    ``(F,)`` for the whole batch or ``(B, F)``) with every call.
    """

    def __init__(
        self,
        net: SequenceClassifierNet,
        class_names: list[str],
        feature_mean: list[float] | None = None,
        feature_std: list[float] | None = None,
        task: str = "classification",
        normalization: Normalization | None = None,
    ) -> None:
        """``normalization``: what the model was trained with; ``dataset`` applies ``feature_mean``
        and ``feature_std`` (the default when they are given, else ``none``), ``speaker`` takes the
        statistics with each call, ``utterance`` is the front end's and ``none`` applies nothing."""
        super().__init__()
        if (feature_mean is None) != (feature_std is None):
            raise ValueError("feature_mean and feature_std must be given together")
        self.normalization: Normalization = normalization or ("none" if feature_mean is None else "dataset")
        if (self.normalization == "dataset") != (feature_mean is not None):
            raise ValueError(
                f"feature_mean and feature_std go with dataset normalisation, not with {self.normalization!r}"
            )
        self.net = net
        self.class_names = list(class_names)
        self.task = task
        if feature_mean is not None:
            self.register_buffer("mean", torch.tensor(feature_mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(feature_std, dtype=torch.float32))
        self.eval()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureClassifier:
        """Works for any checkpoint (an audio one then takes its MFCCs)."""
        return cls.from_model(RNNClassifier.from_checkpoint(path, map_location=device))

    @classmethod
    def from_model(cls, model: RNNClassifier) -> FeatureClassifier:
        """Share ``model``'s network, with its ``data_config``'s labels and statistics."""
        config = model.data_config
        classifier = cls(
            model.net,
            model.class_names,
            config.get("feature_mean"),
            config.get("feature_std"),
            model.hparams.task,
            normalization_of(config),
        )
        return classifier.to(model.device)

    def forward(
        self, features: Tensor, lengths: Tensor, mean: Tensor | None = None, std: Tensor | None = None
    ) -> Tensor:
        if self.normalization == "speaker":
            if mean is None or std is None:
                raise ValueError(
                    "this model normalises features per speaker (features.normalize='speaker'): pass the mean and "
                    "std of the speaker's features (Predictor.speaker_statistics computes them from recordings)"
                )
            if mean.dim() == 2:
                mean, std = mean[:, None], std[:, None]
            features = standardize(features, lengths, mean.to(features), std.to(features))
        elif self.normalization == "dataset":
            features = standardize(features, lengths, self.mean, self.std)
        return output_activation(self.net(features, lengths), self.task)

    def metadata(self) -> dict[str, Any]:
        """What a deployment needs besides the graph: labels, task and what the input is."""
        return {
            "class_names": self.class_names,
            "task": self.task,
            "input": "features",
            "feature_dim": self.net.encoder.input_size,
        }


class WaveformClassifier(nn.Module):
    """A checkpoint as waveforms -> probabilities: MFCC front end, dataset normalisation, network, softmax.

    ``forward(waveforms (B, S) float32 at sample_rate, lengths (B,) int64 samples) -> (B, C)``,
    for each clip of a zero-padded batch as for the clip alone. Does not resample. ``class_names``,
    ``task`` and ``normalization`` are ``classifier``'s.
    """

    def __init__(self, settings: FeatureSettings, classifier: FeatureClassifier) -> None:
        super().__init__()
        self.settings = settings
        self.sample_rate = settings.rate
        self.frontend = MFCCFrontend(settings)
        self.classifier = classifier
        self.class_names = classifier.class_names
        self.task = classifier.task
        self.normalization = classifier.normalization
        self.eval()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> WaveformClassifier:
        """``ValueError`` for a checkpoint without audio feature settings."""
        return cls.from_model(RNNClassifier.from_checkpoint(path, map_location=device), str(path))

    @classmethod
    def from_model(cls, model: RNNClassifier, name: str = "model") -> WaveformClassifier:
        """Share ``model``'s network, with its ``data_config``'s feature settings, labels and statistics."""
        config = model.data_config
        if not config.get("features"):
            raise ValueError(
                f"{name}: the checkpoint has no audio feature settings (it was trained on feature sequences); "
                "use FeatureClassifier, which takes features (B, T, F) and lengths"
            )
        classifier = cls(FeatureSettings.from_dict(config["features"]), FeatureClassifier.from_model(model))
        return classifier.to(model.device)

    def forward(
        self, waveforms: Tensor, lengths: Tensor, mean: Tensor | None = None, std: Tensor | None = None
    ) -> Tensor:
        """``mean``/``std``: the speaker statistics a ``normalization='speaker'`` model needs (see
        :class:`FeatureClassifier`)."""
        # Every STFT frame is kept: an exported graph's shapes cannot depend on the lengths' values.
        lengths = lengths.to(waveforms.device, torch.int64)
        features, frame_lengths = self.frontend.compute(waveforms, lengths, frames=None)
        return self.classifier(features, frame_lengths, mean, std)

    def metadata(self) -> dict[str, Any]:
        """Labels, task, sample rate, the shortest usable clip (samples) and the feature settings."""
        return {
            "class_names": self.class_names,
            "task": self.task,
            "input": "waveform",
            "sample_rate": self.sample_rate,
            "min_samples": self.settings.win_length,
            "features": self.settings.to_dict(),
        }


class EnrolledWaveformClassifier(nn.Module):
    """A model normalised per speaker, as one graph: ``forward(waveforms (B, S), lengths (B,),
    enrollment (E, S'), enrollment_lengths (E,)) -> (B, C)``. Every clip of ``waveforms`` is one
    speaker's; ``enrollment`` holds recordings of that speaker (unlabelled; the clips themselves may
    be among them), whose pooled front-end statistics normalise the clips, as training normalised
    every speaker with its own. This is what a speaker-normalised checkpoint exports as."""

    def __init__(self, classifier: WaveformClassifier) -> None:
        super().__init__()
        if classifier.normalization != "speaker":
            raise ValueError("EnrolledWaveformClassifier is for models trained with features.normalize='speaker'")
        self.inner = classifier
        self.settings, self.sample_rate, self.task = classifier.settings, classifier.sample_rate, classifier.task
        self.eval()

    def forward(self, waveforms: Tensor, lengths: Tensor, enrollment: Tensor, enrollment_lengths: Tensor) -> Tensor:
        enrollment_lengths = enrollment_lengths.to(enrollment.device, torch.int64)
        features, frame_lengths = self.inner.frontend.compute(enrollment, enrollment_lengths, frames=None)
        mean, std = pooled_moments(features, frame_lengths)
        return self.inner(waveforms, lengths, mean, std)

    def metadata(self) -> dict[str, Any]:
        """:meth:`WaveformClassifier.metadata`, and that the graph takes a speaker's enrollment."""
        return {**self.inner.metadata(), "input": "waveform+enrollment"}


class EnrollmentStatistics(nn.Module):
    """A speaker's feature statistics as a graph: ``forward(enrollment (E, S), enrollment_lengths (E,))
    -> (mean (F,), std (F,))``, pooled over the front-end frames of all the recordings, as
    :class:`EnrolledWaveformClassifier` pools them; what a speaker-normalised
    :class:`StreamingWaveformClassifier` takes with every chunk. ``classifier``: the model whose
    front end it shares (a :class:`WaveformClassifier` or :class:`StreamingWaveformClassifier`)."""

    def __init__(self, classifier: WaveformClassifier | StreamingWaveformClassifier) -> None:
        super().__init__()
        self.frontend = classifier.frontend
        self.settings, self.sample_rate = classifier.settings, classifier.sample_rate
        self.eval()

    def forward(self, enrollment: Tensor, enrollment_lengths: Tensor) -> tuple[Tensor, Tensor]:
        lengths = enrollment_lengths.to(enrollment.device, torch.int64)
        return pooled_moments(*self.frontend.compute(enrollment, lengths, frames=None))

    def metadata(self) -> dict[str, Any]:
        """The rate and shortest recording (samples) it takes."""
        return {"input": "enrollment", "sample_rate": self.sample_rate, "min_samples": self.settings.win_length}


DELTA_REACH = 2
"""Frames on each side that one order of deltas reads (:func:`speechrnn.features.deltas`, width 5)."""


def _valid_deltas(x: Tensor) -> Tensor:
    """:func:`speechrnn.features.deltas` of ``(B, T, C)`` over time without padding: ``(B, T - 4, C)``,
    the deltas of frames ``2 .. T - 3`` (the same arithmetic, in the same order)."""
    n = DELTA_REACH
    frames = x.shape[1] - 2 * n
    shifted = [k * (x[:, n + k : n + k + frames] - x[:, n - k : n - k + frames]) for k in range(1, n + 1)]
    return sum(shifted) / (n * (n + 1) * (2 * n + 1) / 3)


class StreamingWaveformClassifier(nn.Module):
    """:class:`WaveformClassifier` chunk by chunk, for a unidirectional network: ``forward(chunk (B,
    chunk_samples), *state, [mean (F,), std (F,)]) -> (probabilities (B, C), *next_state)``; after
    every chunk the probabilities are the offline model's on everything heard so far.

    Every call takes ``chunk_frames`` hops of samples. The state (:meth:`state_specs`; all zeros
    before the first chunk) holds the last ``context_samples`` samples of the centred STFT's input
    (its left context, the first chunk's reflected start included), the running dB peak, the last
    cepstra and deltas that the next deltas read, the recurrent state, the pooling's running summary
    and the number of frames the recurrence has read. Frames are *committed* (read by the recurrence
    and pooled into the state) once no later sample can change them: ``delay_frames`` behind the
    newest sample (the STFT window's right half and two frames per order of deltas). The frames after
    them are computed each call as the offline front end computes a clip's last frames (the signal
    reflected at its end, edge frames replicated for the deltas), run from the committed state and
    pooled into the output only. So the STFT frames, deltas, normalisation, recurrence and pooling are
    exactly the offline ones (up to float rounding), with one exception: the 80 dB floor below the
    clip's loudest bin is taken, for committed frames, below the loudest bin heard so far, where
    offline takes it below the loudest of the whole clip; the two differ only for bins more than 80 dB
    below a peak that comes later (digital silence before the first loud sound).

    Per-utterance normalisation needs the whole clip and cannot stream; neither can a bidirectional
    network nor a per-step one (refused with ``ValueError``). A speaker-normalised model takes the
    speaker's ``mean`` and ``std`` (:class:`EnrollmentStatistics`) with every chunk.
    """

    def __init__(self, classifier: WaveformClassifier, chunk_frames: int = 10) -> None:
        super().__init__()
        net = classifier.classifier.net
        if net.encoder.bidirectional:
            raise ValueError(
                "bidirectional models cannot stream: their backward direction needs the end of the input; "
                "train with --model.bidirectional false to stream"
            )
        if net.per_step:
            raise ValueError("streaming export covers whole-sequence classifiers; this network has per-step outputs")
        if classifier.normalization == "utterance":
            raise ValueError(
                "this model normalises each clip with its own statistics over the whole clip (features.normalize="
                "'utterance'), which a stream has only at its end; train with features.normalize speaker, dataset "
                "or none to stream"
            )
        settings = classifier.settings
        self.settings, self.sample_rate, self.task = settings, classifier.sample_rate, classifier.task
        self.class_names, self.normalization = classifier.class_names, classifier.normalization
        self.frontend, self.feature_classifier, self.net = classifier.frontend, classifier.classifier, net
        hop, half = settings.hop_length, settings.n_fft // 2
        self.lead = -(-half // hop) - 1
        """STFT frames of the first chunk that start before the signal (their windows are cut off)."""
        self.context_samples = half + self.lead * hop
        self.delay_frames = self.lead + DELTA_REACH * settings.deltas
        self.chunk_frames = chunk_frames
        self.chunk_samples = chunk_frames * hop
        shortest = max(self.delay_frames + 1, -(-max(self.context_samples, settings.win_length) // hop))
        if chunk_frames < shortest:
            raise ValueError(
                f"chunk_frames must be >= {shortest} ({shortest * hop} samples) for these feature settings, "
                f"got {chunk_frames}"
            )
        self.eval()

    @classmethod
    def from_model(
        cls, model: RNNClassifier, chunk_frames: int = 10, name: str = "model"
    ) -> StreamingWaveformClassifier:
        return cls(WaveformClassifier.from_model(model, name), chunk_frames)

    def state_specs(self, batch: int = 1) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """``(name, shape, dtype)`` of each state tensor, in the order ``forward`` takes and returns them."""
        settings, encoder, mode = self.settings, self.net.encoder, self.net.pooling.mode
        hidden = (encoder.num_layers, batch, encoder.hidden_size)
        specs = [("context", (batch, self.context_samples), torch.float32), ("peak", (batch,), torch.float32)]
        if settings.deltas:
            specs.append(("history", (batch, settings.deltas, 2 * DELTA_REACH, settings.n_mfcc), torch.float32))
        specs.append(("hidden", hidden, torch.float32))
        if encoder.cell == "lstm":
            specs.append(("cell", hidden, torch.float32))
        if mode != "last":
            specs.append(("pooled", (batch, encoder.hidden_size), torch.float32))
        if mode == "attention":
            specs.append(("scores", (batch, 2), torch.float32))
        return [*specs, ("frames", (batch,), torch.int64)]

    def initial_state(self, batch: int = 1) -> tuple[Tensor, ...]:
        """The state before the first chunk: zeros."""
        return tuple(torch.zeros(shape, dtype=dtype) for _, shape, dtype in self.state_specs(batch))

    def metadata(self) -> dict[str, Any]:
        """What a caller needs: labels, rate, chunk size, the inputs and outputs in order, each state's
        shape (``"batch"`` where the batch size goes; all zeros before the first chunk)."""
        states = {
            name: ["batch" if i == batch_dim(name) else size for i, size in enumerate(shape)]
            for name, shape, _ in self.state_specs()
        }
        speaker = ["mean", "std"] if self.normalization == "speaker" else []
        outputs = ["probabilities" if self.task == "classification" else "outputs"]
        return {
            "class_names": self.class_names,
            "task": self.task,
            "input": "waveform_stream",
            "sample_rate": self.sample_rate,
            "chunk_samples": self.chunk_samples,
            "inputs": ["chunk", *states, *speaker],
            "outputs": outputs + [f"next_{name}" for name in states],
            "states": states,
            "state_dtypes": {name: str(dtype).removeprefix("torch.") for name, _, dtype in self.state_specs()},
            "normalization": self.normalization,
            "features": self.settings.to_dict(),
        }

    def _decibels(self, audio: Tensor) -> Tensor:
        """Mel power in dB ``(B, T, n_mels)`` of every whole STFT window in ``audio (B, S)`` (no padding)."""
        stft = self.frontend.melspectrogram.spectrogram
        spectrum = torchaudio.functional.spectrogram(
            audio, 0, stft.window, stft.n_fft, stft.hop_length, stft.win_length, stft.power, stft.normalized, False
        )
        power = self.frontend.melspectrogram.mel_scale(spectrum).transpose(1, 2)
        return 10.0 * torch.log10(power.clamp_min(1e-10))

    def _cepstra(self, decibels: Tensor, peak: Tensor) -> Tensor:
        return torch.matmul(torch.maximum(decibels, peak[:, None, None] - self.frontend.top_db), self.frontend.dct)

    def forward(self, chunk: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
        names = [name for name, _, _ in self.state_specs()]
        state = dict(zip(names, inputs[: len(names)], strict=True))
        first = state["frames"] == 0
        frames, half, lead, delay = self.chunk_frames, self.settings.n_fft // 2, self.lead, self.delay_frames
        steps = torch.arange(frames, device=chunk.device)[None, :]

        # The STFT: the first chunk's left context is the reflected start, behind ``lead`` cut-off windows.
        start = torch.cat(
            [chunk.new_zeros(chunk.shape[0], self.context_samples - half), chunk[:, 1 : half + 1].flip(-1)], 1
        )
        audio = torch.cat([torch.where(first[:, None], start, state["context"]), chunk], 1)
        context = audio[:, -self.context_samples :]
        decibels = self._decibels(audio)  # frames ``g .. g + frames - 1``, g = chunk_frames * calls - lead
        cut = first[:, None] & (steps < lead)
        heard = decibels.masked_fill(cut[..., None], float("-inf")).amax((1, 2))
        peak = torch.maximum(torch.where(first, float("-inf"), state["peak"]), heard)
        ending = torch.cat([context, context[:, -half - 1 : -1].flip(-1)], 1)  # reflected past the last sample
        ending_decibels = self._decibels(ending)  # the clip's last ``lead + 1`` frames
        stream = self._cepstra(decibels, peak)
        tail = self._cepstra(ending_decibels, torch.maximum(peak, ending_decibels.amax((1, 2))))

        # Deltas: per order, the frames before the newest ``DELTA_REACH`` are final; the rest of the
        # clip's are recomputed each call with its edge frame replicated, as offline.
        reach, orders = DELTA_REACH, self.settings.deltas
        committed, ends, histories = [], [], []
        for order in range(orders):
            known = order * reach + lead  # the first frame of the clip within ``stream``
            fill = stream[:, known : known + 1]
            stream = torch.where((first[:, None] & (steps < known))[..., None], fill, stream)
            seen = torch.cat([torch.where(first[:, None, None], fill, state["history"][:, order]), stream], 1)
            offset = 2 * reach - (orders - order) * reach
            committed.append(seen[:, offset : offset + frames])
            ends.append(torch.cat([seen, tail], 1)[:, -delay - 1 :])
            histories.append(seen[:, -2 * reach :])
            stream = _valid_deltas(seen)
            tail = _valid_deltas(torch.cat([seen[:, -2 * reach :], tail, tail[:, -1:].expand(-1, reach, -1)], 1))
        features = torch.cat([*committed, stream], -1)
        tail_features = torch.cat([*ends, tail], -1)
        if self.normalization == "speaker":
            mean, std = inputs[len(names) :]
            features, tail_features = (features - mean) / std, (tail_features - mean) / std
        elif self.normalization == "dataset":
            mean, std = self.feature_classifier.mean, self.feature_classifier.std
            features, tail_features = (features - mean) / std, (tail_features - mean) / std

        outputs, tail_outputs, recurrent = self._recur(features, tail_features, state, first)
        valid = ~(first[:, None] & (steps < delay))
        summary, pooled = self._pool(outputs, tail_outputs, valid, state, first)
        read = state["frames"] + valid.sum(1)
        next_state = {"context": context, "peak": peak, "history": torch.stack(histories, 1) if orders else None}
        next_state |= recurrent | pooled | {"frames": read}
        probabilities = output_activation(self.net.head(self.net.dropout(summary)), self.task)
        return (probabilities, *(next_state[name] for name in names))

    def _recur(
        self, features: Tensor, tail: Tensor, state: dict[str, Tensor], first: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The committed frames through each layer from the carried state (the first call's leading
        ``delay_frames`` slots, before the clip, are read and then forgotten), then the clip's last
        frames from the new state: ``(outputs, tail outputs, next recurrent state)``."""
        encoder, delay = self.net.encoder, self.delay_frames
        x, t = self.net.input_norm(features), self.net.input_norm(tail)
        carried_out: list[Any] = []
        for depth, directions in enumerate(encoder.layers):
            rnn = directions[0]
            carried: Any = state["hidden"][depth : depth + 1]
            if encoder.cell == "lstm":
                carried = (carried, state["cell"][depth : depth + 1])
            parts = []
            if delay:
                head, after = rnn(x[:, :delay], carried)
                carried = _where(first[None, :, None], carried, after)
                parts.append(head)
            rest, carried = rnn(x[:, delay:], carried)
            x = torch.cat([*parts, rest], 1)
            t, _ = rnn(t, carried)
            carried_out.append(carried)
        if encoder.cell == "lstm":
            return (
                x,
                t,
                {"hidden": torch.cat([h for h, _ in carried_out]), "cell": torch.cat([c for _, c in carried_out])},
            )
        return x, t, {"hidden": torch.cat(carried_out)}

    def _pool(
        self, outputs: Tensor, tail: Tensor, valid: Tensor, state: dict[str, Tensor], first: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The pooling's summary of everything heard (``valid`` committed frames and the tail) and
        its next running state (:meth:`speechrnn.models.pooling.SequencePooling.update`'s, masked)."""
        mode, start = self.net.pooling.mode, first[:, None]
        if mode == "last":
            return tail[:, -1], {}
        if mode == "mean":
            pooled = torch.where(start, 0.0, state["pooled"]) + (outputs * valid[..., None]).sum(1)
            count = state["frames"] + valid.sum(1) + tail.shape[1]
            return (pooled + tail.sum(1)) / count[:, None].to(pooled.dtype), {"pooled": pooled}
        if mode == "max":
            lowest = torch.finfo(outputs.dtype).min
            pooled = torch.maximum(
                torch.where(start, lowest, state["pooled"]), outputs.masked_fill(~valid[..., None], lowest).amax(1)
            )
            return torch.maximum(pooled, tail.amax(1)), {"pooled": pooled}
        scores = state["scores"]
        running = (
            torch.where(start, float("-inf"), scores[:, :1]),
            torch.where(start, 0.0, scores[:, 1:]),
            torch.where(start, 0.0, state["pooled"]),
        )
        running = self._attend(running, outputs, valid)
        peak, normaliser, weighted = self._attend(running, tail, torch.ones_like(tail[..., 0], dtype=torch.bool))
        return weighted / normaliser, {"pooled": running[2], "scores": torch.cat(running[:2], 1)}

    def _attend(self, running: tuple[Tensor, Tensor, Tensor], outputs: Tensor, valid: Tensor) -> tuple[Tensor, ...]:
        """An online softmax step: ``(peak score, normaliser, weighted sum)`` with ``outputs``' valid frames."""
        peak, normaliser, weighted = running
        scores = self.net.pooling.score(outputs).float().masked_fill(~valid[..., None], float("-inf"))
        new_peak = torch.maximum(peak, scores.amax(1))
        weights, rescale = torch.exp(scores - new_peak[:, None]), torch.exp(peak - new_peak)
        return new_peak, weights.sum(1) + rescale * normaliser, (weights * outputs).sum(1) + rescale * weighted


def batch_dim(state: str) -> int:
    """Where the batch goes in a :class:`StreamingWaveformClassifier` state (recurrent states are
    ``(layers, batch, hidden)``)."""
    return 1 if state in ("hidden", "cell") else 0


def _where(condition: Tensor, chosen: Any, other: Any) -> Any:
    """``torch.where`` over a state or a pair of states (an LSTM's)."""
    if isinstance(chosen, tuple):
        return tuple(torch.where(condition, a, b) for a, b in zip(chosen, other, strict=True))
    return torch.where(condition, chosen, other)


class Predictor:
    """Waveforms or audio files -> label probabilities, using the checkpoint's ``data_config``.

    >>> predictor = Predictor.from_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt")
    >>> predictor.predict_file("yes.wav")  # {"yes": 0.97, "no": 0.01, ...}

    A model with ``normalization == 'speaker'`` (trained with ``features.normalize='speaker'``) also
    needs the speaker's statistics: ``stats, _ = predictor.speaker_statistics(that_speakers_files)``
    (or ``known_speaker(name)`` for a voice of the training corpus), then ``predict_file(path, stats)``.
    """

    def __init__(self, model: RNNClassifier, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.classifier = WaveformClassifier.from_model(model.to(self.device).eval())
        self.settings = self.classifier.settings
        self.class_names = self.classifier.class_names
        self.normalization: Normalization = self.classifier.normalization
        """How the model normalises features: ``speaker`` needs each speaker's statistics with every call."""
        self._known = model.data_config.get("speaker_statistics") or {}

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Predictor:
        return cls(RNNClassifier.from_checkpoint(path, map_location=device), device)

    def _audio(self, waveform: Tensor | np.ndarray, sample_rate: int) -> Tensor:
        samples = to_mono(np.asarray(waveform, dtype=np.float32))
        audio = resample(torch.from_numpy(np.ascontiguousarray(samples)), sample_rate, self.settings.rate)
        if audio.numel() < self.settings.win_length:
            raise ValueError(f"waveform too short: {audio.numel()} samples, need {self.settings.win_length}")
        return audio.to(self.device)

    @torch.inference_mode()
    def probabilities(
        self, waveform: Tensor | np.ndarray, sample_rate: int, speaker: SpeakerStatistics | None = None
    ) -> Tensor:
        """Class probabilities ``(num_classes,)`` of one waveform ``(samples,)`` or ``(samples, channels)``;
        ``speaker``: its speaker's statistics, which a ``normalization='speaker'`` model needs."""
        audio = self._audio(waveform, sample_rate)
        lengths = torch.tensor([audio.numel()], device=self.device)
        mean, std = speaker if speaker is not None else (None, None)
        return self.classifier(audio.unsqueeze(0), lengths, mean, std)[0].cpu()

    @torch.inference_mode()
    def speaker_statistics(
        self, recordings: Iterable[str | os.PathLike], skip_errors: bool = False
    ) -> tuple[SpeakerStatistics | None, int]:
        """Feature mean and deviation ``(F,)`` of one speaker's recordings (files), as training
        computed them for every speaker: over all frames of all the recordings, unlabelled (the more
        recordings, the better), and how many recordings were used. A bad file raises
        :class:`AudioError` naming it, or with ``skip_errors`` is left out; None when none was usable."""
        moments = FrameMoments(1, self.settings.feature_dim)
        used = 0
        for path in recordings:
            try:
                audio = read_audio(path, self.settings.rate, min_samples=self.settings.win_length)
            except AudioError:
                if not skip_errors:
                    raise
                continue
            features, frames = self.classifier.frontend(audio.to(self.device).unsqueeze(0))
            moments.add(features, frames, torch.zeros(1, dtype=torch.int64))
            used += 1
        if not used:
            return None, 0
        mean, std = moments.result()
        return (torch.from_numpy(mean[0]), torch.from_numpy(std[0])), used

    def known_speaker(self, name: str) -> SpeakerStatistics:
        """Statistics of a speaker of the training corpus, stored in the checkpoint."""
        if name not in self._known:
            known = ", ".join(sorted(self._known)) or "none (the model does not normalise per speaker)"
            raise KeyError(f"no statistics for speaker {name!r} in the checkpoint; known speakers: {known}")
        entry = self._known[name]
        return torch.tensor(entry["mean"]), torch.tensor(entry["std"])

    def average_speaker(self) -> SpeakerStatistics:
        """The training voices' statistics pooled, each voice weighted alike (the mean of their means;
        their frames' spread about it): a stand-in for a voice that has said nothing yet, such as a
        live stream, whose own statistics cannot be known in advance."""
        if not self._known:
            raise KeyError("the checkpoint stores no speaker statistics (the model does not normalise per speaker)")
        means = torch.tensor([entry["mean"] for entry in self._known.values()], dtype=torch.float64)
        stds = torch.tensor([entry["std"] for entry in self._known.values()], dtype=torch.float64)
        mean = means.mean(0)
        variance = (stds**2 + means**2).mean(0) - mean**2
        return mean.float(), variance.clamp_min(0).sqrt().float()

    def predict_waveform(
        self, waveform: Tensor | np.ndarray, sample_rate: int, speaker: SpeakerStatistics | None = None
    ) -> dict[str, float]:
        """Label -> probability, most likely first."""
        probabilities = self.probabilities(waveform, sample_rate, speaker)
        order = torch.argsort(probabilities, descending=True).tolist()
        return {self.class_names[i]: float(probabilities[i]) for i in order}

    def predict_file(self, path: str | os.PathLike, speaker: SpeakerStatistics | None = None) -> dict[str, float]:
        """Label -> probability for an audio file of any rate and channel count; raises
        :class:`AudioError` naming the file when it cannot be used."""
        waveform = read_audio(path, self.settings.rate, min_samples=self.settings.win_length)
        return self.predict_waveform(waveform.numpy(), self.settings.rate, speaker)


__all__ = [
    "AudioError",
    "EnrolledWaveformClassifier",
    "EnrollmentStatistics",
    "FeatureClassifier",
    "Predictor",
    "StreamingWaveformClassifier",
    "WaveformClassifier",
]
