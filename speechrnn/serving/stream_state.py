"""One live stream's state (one WebSocket): the PCM it sends, resampled block by block to the model's
rate, scored every hop as ``speechrnn spot`` scores a recording, and turned into messages: the most
likely labels of each new window (``labels``) and keyword events once final (``event``)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from speechrnn.audio_io import check_sample_rate
from speechrnn.serving.live_events import LiveEvents
from speechrnn.serving.model import ServedModel
from speechrnn.spotting.blocks import BlockResampler
from speechrnn.spotting.events import Event

PcmFormat = Literal["f32", "s16"]
"""Samples of a chunk: little-endian float32 in [-1, 1], or signed 16-bit integers."""

TOP_LABELS = 3
"""Labels sent with each ``labels`` message."""


class StreamError(ValueError):
    """A stream that cannot go on (a bad chunk or setting); the message says why."""


class KeywordStream:
    """Chunks of mono PCM at ``sample_rate`` in (:meth:`push`), JSON-ready messages out."""

    def __init__(self, served: ServedModel, sample_rate: int, pcm: PcmFormat = "f32", name: str = "stream") -> None:
        try:
            check_sample_rate(name, sample_rate)
        except ValueError as error:
            raise StreamError(str(error)) from None
        if pcm not in ("f32", "s16"):
            raise StreamError(f"format must be f32 or s16, got {pcm!r}")
        self.served, self.sample_rate, self.pcm = served, sample_rate, pcm
        self.dtype = np.dtype("<f4") if pcm == "f32" else np.dtype("<i2")
        self.resampler = BlockResampler(sample_rate, served.rate)
        self.scorer = served.scorer()
        hop_s, window_s = served.frame_seconds
        self.events = LiveEvents(
            served.class_names, served.thresholds, hop_s=hop_s, window_s=window_s,
            smoothing_s=served.smoothing_s, refractory_s=served.refractory_s, file=name,
        )  # fmt: skip
        self.samples = 0
        """Samples received, at ``sample_rate``."""
        self.heard = 0
        """Samples scored, at the model's rate."""

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    def decode(self, chunk: bytes) -> np.ndarray:
        """A chunk's samples as float32; a chunk that is not whole samples, or holds NaN or infinite
        values, is a :class:`StreamError`."""
        if len(chunk) % self.dtype.itemsize:
            raise StreamError(f"a chunk of {len(chunk)} bytes is not whole {self.pcm} samples")
        samples = np.frombuffer(chunk, dtype=self.dtype)
        if self.pcm == "s16":
            return samples.astype(np.float32) / 32768.0
        if not np.isfinite(samples).all():
            raise StreamError("the chunk holds NaN or infinite samples")
        return samples.astype(np.float32)

    def push(self, chunk: bytes) -> list[dict[str, Any]]:
        """The messages the chunk's samples complete."""
        samples = self.decode(chunk)
        self.samples += len(samples)
        return self._messages(self.scorer.push(self._resampled(self.resampler.push(samples))))

    def finish(self) -> list[dict[str, Any]]:
        """The stream has ended: the messages of its last samples, the events still open, and ``end``."""
        scored = self.scorer.push(self._resampled(self.resampler.flush()))
        if self.heard >= self.served.min_samples:
            scored += self.scorer.finish()
        messages = self._messages(scored)
        messages += [event_message(event) for event in self.events.finish()]
        return [*messages, {"type": "end", "seconds": round(self.seconds, 3)}]

    def _resampled(self, samples: np.ndarray) -> np.ndarray:
        self.heard += len(samples)
        return samples

    def _messages(self, scored: list[tuple[np.ndarray, Any]]) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        for times, logits in scored:
            if not len(times):
                continue
            probabilities = self.served.softmax(logits)
            latest = probabilities[-1]
            order = np.argsort(-latest)[:TOP_LABELS]
            top = [{"label": self.served.class_names[i], "probability": round(float(latest[i]), 4)} for i in order]
            messages.append({"type": "labels", "time": round(float(times[-1]), 3), "top": top})
            messages += [event_message(event) for event in self.events.push(times, probabilities)]
        return messages


def event_message(event: Event) -> dict[str, Any]:
    """An event as ``spot --format jsonl`` writes it, with ``type: event``."""
    return {
        "type": "event", "label": event.label, "start": round(event.start, 3), "end": round(event.end, 3),
        "score": round(event.score, 4),
    }  # fmt: skip
