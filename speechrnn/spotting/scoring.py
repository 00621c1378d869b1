"""A posterior track over audio of any length: the model's class probabilities every ``hop_s``.

Two ways to score, both reading the audio block by block in memory that does not grow with its
length (the track itself, ``C`` floats per hop, is what grows):

- ``window``: every ``hop_s``, the window of the last ``window_s`` (the training clip length) is
  classified as a clip, exactly as :class:`~speechrnn.inference.WaveformClassifier` classifies that
  window cut out of the resampled file (same front end, per-clip floor and normalisation, fresh
  recurrent state, pooling over the window), in batches of ``batch_size`` windows. Works for every
  model, and is the only way for bidirectional ones. Costs ``window_s / hop_s`` encoder steps per
  feature frame.
- ``stream`` (unidirectional models): one pass. The front end runs on the continuous signal
  (each frame as the front end computes it on the whole file, the 80 dB floor taken per block of a
  few seconds instead of per clip; it only acts on frames 80 dB below the loudest, i.e. digital
  silence), features are normalised frame by frame (dataset or speaker statistics: a model
  normalised per utterance cannot stream), and the encoder's recurrent state is carried from the
  start of the file, never reset. A whole-clip classifier's output at ``t`` pools the encoder
  outputs of the trailing ``window_s`` (``last`` pooling: the state at ``t``); a per-step model's is
  its output at the frame at ``t``. One encoder step per frame.

How each relates to training on clips: ``window`` is a clip classification at every hop, exact to
training. ``stream`` differs from it in that the state at a window's start is not zero but carries
everything before, and in the window's edge frames (real audio where a lone clip is reflected); it
equals ``window`` for audio no longer than one window, and a per-step model's stream equals its
offline output on the whole recording frame for frame (as the model is trained on whole sequences).
``auto`` picks the mode that is exact to training: ``stream`` for unidirectional per-step models
whose features are normalised frame by frame, ``window`` for everything else (every whole-clip
classifier, whose training never saw a state older than a clip). Measured on an hour of synthetic
words in noise (``benchmarks/spot_long.py``: a unidirectional GRU 2 x 128 trained 4 epochs on
synthetic-commands' 1.8 s clips, no ``_unknown_`` class, one word every 30 s, threshold 0.5): window
found 102 of the 120 words with 662 events on no word, stream 55 with 164, 5.6 times faster
(real-time factors 0.028 and 0.005 on one core of a 2-core EPYC).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from speechrnn.audio_io import AudioError
from speechrnn.features import FeatureSettings, MFCCFrontend
from speechrnn.inference import WaveformClassifier
from speechrnn.models.classifier import RNNClassifier, is_classification
from speechrnn.normalization import FrameMoments, normalization_of, standardize
from speechrnn.spotting.blocks import BlockResampler, open_audio
from speechrnn.spotting.settings import DEFAULT_WINDOW_S, training_window_seconds
from speechrnn.spotting.track import PosteriorTrack

__all__ = [
    "Mode", "PosteriorTrack", "resolve_mode", "score_blocks", "score_file", "speaker_statistics", "tempered_softmax",
    "window_seconds",
]  # fmt: skip

Mode = Literal["auto", "window", "stream"]
SpeakerStatistics = tuple[Tensor, Tensor]


def tempered_softmax(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``softmax(logits / temperature)`` in float32; ``logits`` may be log-probabilities (any constant
    shift gives the same result)."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def window_seconds(model: RNNClassifier, window_s: float | None = None) -> float:
    """``window_s``, or the training clip length the checkpoint records, or :data:`DEFAULT_WINDOW_S`."""
    if window_s is not None:
        return float(window_s)
    return training_window_seconds(model.data_config) or DEFAULT_WINDOW_S


def resolve_mode(model: RNNClassifier, mode: Mode = "auto") -> Literal["window", "stream"]:
    """The scoring mode ``mode`` means for ``model`` (see the module's docstring); a mode the model
    cannot use is a ``ValueError`` saying why."""
    if mode not in ("auto", "window", "stream"):
        raise ValueError(f"mode must be auto, window or stream, got {mode!r}")
    encoder = model.net.encoder
    per_frame = normalization_of(model.data_config) != "utterance"
    if mode == "auto":
        return "stream" if model.net.per_step and not encoder.bidirectional and per_frame else "window"
    if mode == "stream" and encoder.bidirectional:
        raise ValueError(
            "stream mode needs a unidirectional model (a bidirectional one reads each window backwards); use window"
        )
    if mode == "stream" and not per_frame:
        raise ValueError(
            "stream mode needs features normalised frame by frame (dataset or speaker statistics); this model "
            "normalises each clip with its own statistics: use window mode"
        )
    return mode


class Rows:
    """Times ``(N,)`` and logits ``(N, C)`` gathered batch by batch into arrays whose capacity doubles:
    a few large allocations rather than thousands of small ones that would stay alive between the large
    temporaries of scoring and fragment the heap (an hour in small pieces grew the process by 0.4 GB)."""

    def __init__(self, columns: int) -> None:
        self.times = np.zeros(1024, dtype=np.float64)
        self.values = np.zeros((1024, columns), dtype=np.float32)
        self.size = 0

    def add(self, scored: list[tuple[np.ndarray, Tensor]]) -> None:
        for times, logits in scored:
            end = self.size + len(times)
            if end > len(self.times):
                capacity = max(end, 2 * len(self.times))
                self.times = np.concatenate([self.times, np.zeros(capacity - len(self.times))])
                grown = np.zeros((capacity - len(self.values), self.values.shape[1]), dtype=np.float32)
                self.values = np.concatenate([self.values, grown])
            self.times[self.size : end], self.values[self.size : end] = times, logits.numpy()
            self.size = end

    def result(self) -> tuple[np.ndarray, Tensor]:
        return self.times[: self.size].copy(), torch.from_numpy(self.values[: self.size].copy())


class Windows:
    """Samples in, windows out: ``window`` samples every ``hop``, in batches of up to ``batch_size``.

    :meth:`push` yields the batches the samples complete, :meth:`finish` the last one; a signal
    shorter than a window is one window of all of it. Each batch is ``(windows (B, S) float32,
    ends (B,) int64 samples)``; only what the next windows need is kept."""

    def __init__(self, window: int, hop: int, batch_size: int) -> None:
        self.window, self.hop, self.batch_size = window, hop, batch_size
        self.buffer = np.zeros(0, dtype=np.float32)
        self.base = 0
        """Sample index of ``buffer[0]``."""
        self.next_start = 0
        self.pending: list[np.ndarray] = []
        self.ends: list[int] = []
        self.emitted = 0

    @property
    def total(self) -> int:
        return self.base + len(self.buffer)

    def push(self, samples: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self.buffer = np.concatenate([self.buffer, samples])
        while self.next_start + self.window <= self.total:
            offset = self.next_start - self.base
            self.pending.append(self.buffer[offset : offset + self.window])
            self.ends.append(self.next_start + self.window)
            self.next_start += self.hop
            if len(self.pending) == self.batch_size:
                yield self._batch()
        drop = min(self.next_start, self.total) - self.base
        if drop > 0:
            self.buffer, self.base = self.buffer[drop:], self.base + drop

    def finish(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.pending:
            yield self._batch()
        if self.emitted == 0 and self.total > 0:
            self.emitted += 1
            yield self.buffer[None, : self.total - self.base].copy(), np.array([self.total])

    def _batch(self) -> tuple[np.ndarray, np.ndarray]:
        batch, ends = np.stack(self.pending), np.array(self.ends, dtype=np.int64)
        self.pending, self.ends = [], []
        self.emitted += len(batch)
        return batch, ends


class WindowScorer:
    """``window`` mode: each window classified as a clip (:class:`WaveformClassifier`), batched."""

    def __init__(
        self, model: RNNClassifier, window: int, hop: int, batch_size: int, speaker: SpeakerStatistics | None
    ) -> None:
        self.classifier = WaveformClassifier.from_model(model)
        self.windows = Windows(window, hop, batch_size)
        self.speaker = speaker
        self.rate = self.classifier.settings.rate
        self.min_samples = self.classifier.settings.win_length
        self.device = model.device

    def push(self, samples: np.ndarray) -> list[tuple[np.ndarray, Tensor]]:
        return [self._score(*batch) for batch in self.windows.push(samples)]

    def finish(self) -> list[tuple[np.ndarray, Tensor]]:
        return [self._score(*batch) for batch in self.windows.finish()]

    @torch.inference_mode()
    def _score(self, windows: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, Tensor]:
        if windows.shape[1] < self.min_samples:
            raise ValueError(f"audio too short: {windows.shape[1]} samples, need {self.min_samples}")
        mean, std = self.speaker if self.speaker is not None else (None, None)
        lengths = torch.full((len(windows),), windows.shape[1], dtype=torch.int64)
        probabilities = self.classifier(torch.from_numpy(windows).to(self.device), lengths, mean, std)
        if probabilities.dim() == 3:  # a per-step model: its output at each window's last frame
            probabilities = probabilities[:, -1]
        return ends / self.rate, torch.log(probabilities.float()).cpu()


class FrameStream:
    """The front end over a continuous signal, block by block: :meth:`push` samples, get the feature
    frames ``(n, F)`` they complete, each as the front end computes it on the whole signal (up to its
    80 dB floor, taken per block here); :meth:`flush` returns the rest. Frame ``i`` is centred on
    sample ``i * hop_length``. The features are not normalised (the caller applies its statistics)."""

    def __init__(self, settings: FeatureSettings, device: torch.device | str = "cpu") -> None:
        self.settings = dataclasses.replace(settings, normalize="none")
        self.frontend = MFCCFrontend(self.settings).to(device)
        self.device = device
        self.hop = self.settings.hop_length
        self.half = self.settings.n_fft // 2
        self.reach = 2 * self.settings.deltas
        """Frames to either side that a frame's deltas read."""
        self.margin = -(-self.half // self.hop) + self.reach
        """Frames before the first new frame that each block is computed with."""
        self.buffer = np.zeros(0, dtype=np.float32)
        self.base = 0
        """Sample index of ``buffer[0]`` (a whole number of hops)."""
        self.done = 0
        """Frames returned."""

    def push(self, samples: np.ndarray) -> Tensor:
        self.buffer = np.concatenate([self.buffer, samples])
        supported = (self.base + len(self.buffer) - self.half) // self.hop  # last frame with its whole window
        return self._frames(supported - self.reach + 1)

    def flush(self) -> Tensor:
        return self._frames(None)

    @torch.inference_mode()
    def _frames(self, ready: int | None) -> Tensor:
        """Frames ``done`` up to ``ready`` (None: to the end of the signal)."""
        if (ready is not None and ready <= self.done) or len(self.buffer) == 0:
            return torch.zeros(0, self.settings.feature_dim, device=self.device)
        first = max(0, self.done - self.margin)
        audio = torch.from_numpy(np.ascontiguousarray(self.buffer[first * self.hop - self.base :]))
        features, _ = self.frontend(audio.to(self.device)[None])
        stop = None if ready is None else ready - first
        frames = features[0, self.done - first : stop]
        self.done += len(frames)
        keep = max(0, self.done - self.margin) * self.hop
        self.buffer, self.base = self.buffer[keep - self.base :], keep
        return frames


class StreamScorer:
    """``stream`` mode: one pass with the recurrent state carried (see the module's docstring)."""

    def __init__(
        self, model: RNNClassifier, window_frames: int, hop_frames: int, speaker: SpeakerStatistics | None
    ) -> None:
        self.net = model.net.eval()
        self.device = model.device
        classifier = WaveformClassifier.from_model(model)
        self.settings = classifier.settings
        self.frames = FrameStream(self.settings, self.device)
        self.statistics: SpeakerStatistics | None = None
        if classifier.normalization == "dataset":
            self.statistics = (classifier.classifier.mean, classifier.classifier.std)
        elif classifier.normalization == "speaker":
            if speaker is None:
                raise ValueError("this model normalises per speaker: pass the speaker's statistics (speaker=)")
            self.statistics = (speaker[0].to(self.device), speaker[1].to(self.device))
        self.per_step = self.net.per_step
        self.span = 0 if self.per_step else window_frames  # frames before the output frame that it pools
        self.first, self.hop = (hop_frames if self.per_step else window_frames), hop_frames
        self.states = None
        self.history = torch.zeros(0, self.net.encoder.output_size, device=self.device)
        """Encoder outputs of the latest ``span`` frames (and those of the current chunk)."""
        self.seen = 0
        """Frames encoded; ``history[-1]`` is frame ``seen - 1``."""
        self.next_output = self.first
        self.emitted = 0
        self.samples = 0

    def push(self, samples: np.ndarray) -> list[tuple[np.ndarray, Tensor]]:
        self.samples += len(samples)
        return self._encode(self.frames.push(samples))

    def finish(self) -> list[tuple[np.ndarray, Tensor]]:
        scored = self._encode(self.frames.flush())
        if self.emitted == 0 and self.seen > 0:  # shorter than a window: the whole signal as one
            self.next_output = self.seen - 1
            self.span = len(self.history) - 1
            (_, logits) = self._outputs()[0]
            scored.append((np.array([self.samples / self.settings.rate]), logits))
        return scored

    @torch.inference_mode()
    def _encode(self, features: Tensor) -> list[tuple[np.ndarray, Tensor]]:
        if len(features) == 0:
            return []
        x = features[None]
        lengths = torch.tensor([x.shape[1]])
        if self.statistics is not None:
            x = standardize(x, lengths, *self.statistics)
        outputs, self.states = self.net.encoder(self.net.input_norm(x), lengths, states=self.states, return_states=True)
        self.history = torch.cat([self.history, outputs[0]])
        self.seen += outputs.shape[1]
        scored = self._outputs()
        self.history = self.history[-(self.span + 1) :] if not self.per_step else self.history[-1:]
        return scored

    @torch.inference_mode()
    def _outputs(self) -> list[tuple[np.ndarray, Tensor]]:
        """The outputs at every output frame now encoded: ``(times (n,) s, logits (n, C))``."""
        if self.next_output >= self.seen:
            return []
        frames = np.arange(self.next_output, self.seen, self.hop)
        self.next_output = int(frames[-1]) + self.hop
        self.emitted += len(frames)
        position = torch.from_numpy(frames - (self.seen - len(self.history)))  # rows of history
        times = frames * self.settings.hop_length / self.settings.rate
        if self.per_step:
            return [(times, self.net.head(self.history[position]).cpu())]
        windows = self.history[position[:, None] - self.span + torch.arange(self.span + 1)]  # (n, span + 1, D)
        lengths = torch.full((len(frames),), self.span + 1, dtype=torch.int64)
        return [(times, self.net.head(self.net.pooling(windows, lengths)).cpu())]


def scoring_frames(
    model: RNNClassifier, mode: Literal["window", "stream"], settings: FeatureSettings, hop_s: float, window_s: float
) -> tuple[int, int, int]:
    """``hop_s`` and ``window_s`` rounded to whole feature frames, and the frames each score covers (a
    per-step model streamed scores each hop alone): ``(hop, window, covered)``."""
    hop = max(1, round(hop_s * settings.rate / settings.hop_length))
    window = max(1, round(window_s * settings.rate / settings.hop_length))
    return hop, window, hop if mode == "stream" and model.net.per_step else window


def new_scorer(
    model: RNNClassifier,
    mode: Literal["window", "stream"],
    settings: FeatureSettings,
    hop: int,
    window: int,
    batch_size: int,
    speaker: SpeakerStatistics | None,
) -> WindowScorer | StreamScorer:
    """A fresh scorer of ``mode`` for one recording or stream, every ``hop`` frames over ``window``
    frames (:func:`scoring_frames`)."""
    if mode == "window":
        frame = settings.hop_length
        return WindowScorer(model, window * frame, hop * frame, batch_size, speaker)
    return StreamScorer(model, window, hop, speaker)


def score_blocks(
    model: RNNClassifier,
    blocks: Iterable[np.ndarray],
    sample_rate: int,
    *,
    hop_s: float = 0.1,
    window_s: float | None = None,
    mode: Mode = "auto",
    batch_size: int = 64,
    temperature: float = 1.0,
    speaker: SpeakerStatistics | None = None,
    device: str = "cpu",
) -> PosteriorTrack:
    """The posterior track of audio arriving as ``blocks`` (``(samples,)`` or ``(samples, channels)``
    arrays at ``sample_rate``, any sizes), scored every ``hop_s`` over windows of ``window_s`` (by
    default the training clip length the checkpoint records, else 1 s), both rounded to whole feature
    frames. ``mode``: see the module's docstring. ``temperature`` divides the logits before the
    softmax. ``speaker``: the speaker statistics a model normalised per speaker needs
    (:func:`speaker_statistics` computes them from audio). Memory does not grow with the audio's length.
    """
    model = model.to(device).eval()
    if not is_classification(model.hparams.task):
        raise ValueError(f"spotting needs a classification model; this one's task is {model.hparams.task}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    chosen = resolve_mode(model, mode)
    settings = WaveformClassifier.from_model(model).settings
    if normalization_of(model.data_config) == "speaker" and speaker is None:
        raise ValueError(
            "this model normalises features per speaker (features.normalize='speaker'): pass the speaker's statistics "
            "(speaker_statistics computes them from recordings, score_file from the file itself)"
        )
    hop, window, covered = scoring_frames(model, chosen, settings, hop_s, window_seconds(model, window_s))
    scorer = new_scorer(model, chosen, settings, hop, window, batch_size, speaker)
    frame = settings.hop_length
    resampler = BlockResampler(sample_rate, settings.rate)
    rows, total = Rows(len(model.class_names)), 0
    for block in blocks:
        samples = resampler.push(_mono(block))
        total += len(samples)
        rows.add(scorer.push(samples))
    samples = resampler.flush()
    total += len(samples)
    rows.add(scorer.push(samples) + scorer.finish())
    if total < settings.win_length:
        raise ValueError(f"audio too short: {total} samples at {settings.rate} Hz, need at least {settings.win_length}")
    times, logits = rows.result()
    probabilities = tempered_softmax(logits, temperature).numpy().astype(np.float32)
    return PosteriorTrack(
        times=times,
        probabilities=probabilities,
        class_names=list(model.class_names),
        window_s=covered * frame / settings.rate,
        hop_s=hop * frame / settings.rate,
        duration_s=total / settings.rate,
        mode=chosen,
    )


def _mono(block: np.ndarray) -> np.ndarray:
    block = np.asarray(block, dtype=np.float32)
    return block.mean(axis=1) if block.ndim == 2 else block


@torch.inference_mode()
def speaker_statistics(
    model: RNNClassifier, blocks: Iterable[np.ndarray], sample_rate: int, window_s: float | None = None
) -> SpeakerStatistics:
    """A speaker's feature mean and deviation ``(F,)`` from audio arriving in ``blocks``, as training
    computed each speaker's: the front end on clips of ``window_s`` (the training clip length; the
    audio cut into consecutive windows, a remainder shorter than one left out unless it is all there
    is), pooled over all their frames."""
    classifier = WaveformClassifier.from_model(model)
    settings = classifier.settings
    window = round(window_seconds(model, window_s) * settings.rate)
    windows = Windows(window, window, 64)
    moments = FrameMoments(1, settings.feature_dim)
    resampler = BlockResampler(sample_rate, settings.rate)

    def add(batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        for batch, _ in batches:
            if batch.shape[1] >= settings.win_length:
                features, frames = classifier.frontend(torch.from_numpy(batch).to(model.device))
                moments.add(features, frames, torch.zeros(len(batch), dtype=torch.int64))

    for block in blocks:
        add(windows.push(resampler.push(_mono(block))))
    add(windows.push(resampler.flush()))
    add(windows.finish())
    if not moments.count.sum() > 0:
        raise ValueError("audio too short for speaker statistics")
    mean, std = moments.result()
    return torch.from_numpy(mean[0]), torch.from_numpy(std[0])


def score_file(
    model: RNNClassifier, path: str | os.PathLike, *, block_s: float = 10.0, **options: Any
) -> PosteriorTrack:
    """:func:`score_blocks` over an audio file of any length, rate and channel count, read ``block_s``
    seconds at a time; ``options`` are :func:`score_blocks`' (``hop_s``, ``window_s``, ``mode``,
    ``batch_size``, ``temperature``, ``speaker``, ``device``). A model normalised per speaker without
    ``speaker`` takes the file's own statistics (:func:`speaker_statistics` over the file: a first
    pass). A file that cannot be used is an :class:`~speechrnn.audio_io.AudioError` naming it."""
    stream = open_audio(path)
    try:
        model = model.to(options.get("device", "cpu"))
        if options.get("speaker") is None and normalization_of(model.data_config) == "speaker":
            options["speaker"] = speaker_statistics(
                model, stream.blocks(block_s), stream.sample_rate, options.get("window_s")
            )
        return score_blocks(model, stream.blocks(block_s), stream.sample_rate, **options)
    except ValueError as error:
        if isinstance(error, AudioError) or "too short" not in str(error):
            raise
        raise AudioError(path, str(error)) from None
