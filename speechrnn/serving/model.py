"""The served checkpoint: loaded once, asked for clip probabilities (batched), keyword events of a
recording, and scorers for live streams, all through the graphs ``predict`` and ``spot`` use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechrnn.audio_io import AudioBytes, read_audio
from speechrnn.errors import ConfigError
from speechrnn.inference import Predictor
from speechrnn.normalization import normalization_of
from speechrnn.spot import audio_classifier, class_thresholds, detection_settings
from speechrnn.spotting.events import Event, detect_events
from speechrnn.spotting.scoring import (
    Mode,
    StreamScorer,
    WindowScorer,
    new_scorer,
    resolve_mode,
    score_blocks,
    scoring_frames,
    speaker_statistics,
    tempered_softmax,
    window_seconds,
)
from speechrnn.spotting.settings import stored_spotting

SpeakerStatistics = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class SpotOptions:
    """How recordings and streams are spotted; None: as ``speechrnn spot`` decides (the checkpoint's
    calibration, else its defaults)."""

    hop_s: float | None = None
    window_s: float | None = None
    smoothing_s: float | None = None
    refractory_s: float | None = None
    threshold: float | None = None
    thresholds: dict[str, float] | None = field(default=None, hash=False)
    temperature: float | None = None
    mode: Mode | None = None


class ServedModel:
    """A classifier of audio loaded from ``ckpt`` on ``device``, with ``spot``'s detection settings.

    ``speaker``: for a model normalised per speaker, a training voice whose stored statistics
    normalise streams (uploads are normalised with their own statistics, as ``predict`` does)."""

    def __init__(
        self, ckpt: Path, device: str = "cpu", spotting: SpotOptions = SpotOptions(), speaker: str | None = None
    ) -> None:
        self.ckpt = Path(ckpt)
        self.device = device
        model = audio_classifier(ckpt, device, "serving")
        config = model.data_config
        self.model = model
        self.predictor = Predictor(model, device)
        self.rate = self.predictor.settings.rate
        self.min_samples = self.predictor.settings.win_length
        self.class_names = list(self.predictor.class_names)
        self.per_speaker = normalization_of(config) == "speaker"
        self.stream_speaker: SpeakerStatistics | None = None
        if speaker is not None:
            try:
                self.stream_speaker = self.predictor.known_speaker(speaker)
            except KeyError as error:
                raise ConfigError(f"--speaker: {error.args[0]}") from None
        self.live_speaker = self.stream_speaker
        """What a live stream of a model normalised per speaker is normalised with: ``--speaker``'s voice,
        else the training voices pooled (:meth:`~speechrnn.inference.Predictor.average_speaker`), since a
        stream's own statistics are unknown when it starts; uploads use their own, as ``predict`` does."""
        if self.per_speaker and self.live_speaker is None:
            self.live_speaker = self.predictor.average_speaker()

        calibration = stored_spotting(config, str(ckpt), warn=False)
        given = {key: getattr(spotting, key) for key in ("hop_s", "window_s", "smoothing_s", "refractory_s")}
        detection = detection_settings({**given, "mode": spotting.mode}, calibration.detection, str(ckpt))
        try:
            self.mode = resolve_mode(model, detection["mode"])
        except ValueError as error:
            raise ConfigError(f"--mode {detection['mode']}: {error}") from None
        self.hop_s, self.smoothing_s, self.refractory_s = (
            detection["hop_s"], detection["smoothing_s"], detection["refractory_s"]
        )  # fmt: skip
        self.window_s = window_seconds(model, detection["window_s"])
        self.temperature = spotting.temperature or calibration.temperature
        self.thresholds = class_thresholds(model, spotting.threshold, spotting.thresholds, calibration.thresholds)
        self.calibrated = calibration.calibrated

    # --- clips -----------------------------------------------------------------------------------
    def waveform(self, audio: AudioBytes, max_seconds: float | None) -> Tensor:
        """An upload as ``predict`` reads a file: mono, at the model's rate, checked (an
        :class:`~speechrnn.audio_io.AudioError` naming it), at most ``max_seconds`` long."""
        return read_audio(audio, self.rate, min_samples=self.min_samples, max_seconds=max_seconds)

    def clip_statistics(self, audio: AudioBytes) -> SpeakerStatistics | None:
        """The statistics ``predict`` gives a clip of a model normalised per speaker (the clip's own
        frames; the stream voice's with ``--speaker``); None for other models."""
        if not self.per_speaker:
            return None
        if self.stream_speaker is not None:
            return self.stream_speaker
        statistics, _ = self.predictor.speaker_statistics([audio])
        return statistics

    @torch.inference_mode()
    def probabilities(self, clips: list[tuple[Tensor, SpeakerStatistics | None]]) -> list[dict[str, float]]:
        """Label -> probability (most likely first) of each clip, in one zero-padded batch through
        ``predict``'s graph (each clip gets what it gets alone, up to float rounding)."""
        waveforms = [waveform for waveform, _ in clips]
        lengths = torch.tensor([len(w) for w in waveforms], device=self.predictor.device)
        padded = torch.nn.utils.rnn.pad_sequence(waveforms, batch_first=True).to(self.predictor.device)
        mean = std = None
        if self.per_speaker:
            mean = torch.stack([statistics[0] for _, statistics in clips])  # type: ignore[index]
            std = torch.stack([statistics[1] for _, statistics in clips])  # type: ignore[index]
        probabilities = self.predictor.classifier(padded, lengths, mean, std).cpu()
        answers = []
        for row in probabilities:
            order = torch.argsort(row, descending=True).tolist()
            answers.append({self.class_names[i]: float(row[i]) for i in order})
        return answers

    # --- keywords --------------------------------------------------------------------------------
    def spot(self, waveform: Tensor, name: str) -> tuple[list[Event], float]:
        """Keyword events of a recording at the model's rate, as ``speechrnn spot`` finds them, and
        its length in seconds."""
        samples = waveform.numpy()
        statistics = self.stream_speaker
        if self.per_speaker and statistics is None:
            statistics = speaker_statistics(self.model, [samples], self.rate, self.window_s)
        track = score_blocks(
            self.model, [samples], self.rate, hop_s=self.hop_s, window_s=self.window_s, mode=self.mode,
            temperature=self.temperature, speaker=statistics, device=self.device,
        )  # fmt: skip
        events = detect_events(
            track, self.thresholds, smoothing_s=self.smoothing_s, refractory_s=self.refractory_s, file=name
        )
        return events, track.duration

    def scorer(self) -> WindowScorer | StreamScorer:
        """A fresh scorer for one stream, at the hop and window ``score_blocks`` would use (whole
        feature frames); its ``push`` takes samples at the model's rate and returns ``(times, logits)``."""
        settings = self.predictor.settings
        hop, window, _ = scoring_frames(self.model, self.mode, settings, self.hop_s, self.window_s)
        return new_scorer(self.model, self.mode, settings, hop, window, 1, self.live_speaker)  # no wait for a batch

    @property
    def frame_seconds(self) -> tuple[float, float]:
        """The hop and window of a stream's track, in seconds, as rounded to whole frames."""
        settings = self.predictor.settings
        hop, _, covered = scoring_frames(self.model, self.mode, settings, self.hop_s, self.window_s)
        return hop * settings.hop_length / self.rate, covered * settings.hop_length / self.rate

    def softmax(self, logits: Tensor) -> np.ndarray:
        """Logits of a scorer as probabilities at the served temperature."""
        return tempered_softmax(logits, self.temperature).numpy().astype(np.float32)

    def metadata(self) -> dict[str, Any]:
        """Labels, sample rate, feature settings, model size and the spotting settings."""
        parameters = sum(p.numel() for p in self.model.parameters())
        hop, window = self.frame_seconds
        return {
            "checkpoint": self.ckpt.name,
            **self.predictor.classifier.metadata(),
            "normalization": self.predictor.normalization,
            "parameters": parameters,
            "size_bytes": sum(p.numel() * p.element_size() for p in self.model.parameters()),
            "spotting": {
                "calibrated": self.calibrated, "thresholds": self.thresholds, "temperature": self.temperature,
                "hop_s": hop, "window_s": window, "smoothing_s": self.smoothing_s,
                "refractory_s": self.refractory_s, "mode": self.mode,
            },
        }  # fmt: skip
