"""Deterministic test streams for keyword spotting: a split's keyword clips at known times in its own
background audio, with non-keyword words between them, and negative audio (background and
non-keyword words, no keyword) of any length.

A :class:`StreamSet` is a plan, not audio: where each word goes, at what level, and a seed for the
background. Rendering is random access (any span of any stream is computed from the plan alone), so
streams come block by block (:meth:`StreamSet.blocks`; hours of negative audio never sit in
memory), and a span is the same samples however the stream is cut into blocks.

- Words are trimmed to where their speech is, plus :data:`ACTIVE_MARGIN_S` each side: the record's
  ``segments`` when the corpus knows them, else the clip's active frames (:func:`active_span`); the
  truth of a keyword is that span.
- The background is the split's own background audio (``background_recordings(split)`` of the
  DataModule, or else the split's ``_silence_`` clips), each region normalised to one RMS, laid
  down in segments of a few seconds at seeded offsets with a seeded gain (``level_spread_db``) and
  equal-power cross-fades, so a short background loops without repeating in step.
  :attr:`StreamSet.background_seconds` is how much unique background audio there is.
- A keyword's SNR is its power over its span against the power of the background under the same
  span (exactly ``snr_db``); non-keyword words get ``snr_db`` +- ``level_spread_db``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import soundfile as sf
import torch

from speechrnn.audio_io import AudioError, read_audio, resample, to_mono
from speechrnn.errors import ConfigError, UserInputError

UNKNOWN = "_unknown_"
SILENCE = "_silence_"
NON_KEYWORDS = (UNKNOWN, SILENCE)
"""Classes that are not keywords: they are never spotted, and never placed as keywords."""
ACTIVE_FLOOR_DB = 35.0
"""A clip's active part: its 20 ms frames within this many dB of its loudest frame ..."""
ACTIVE_OVER_NOISE_DB = 6.0
"""... and this many dB above its noise floor (its 10th-percentile frame), but at least 6 dB below the loudest."""
ACTIVE_MARGIN_S = 0.05
"""Kept around a clip's active part."""
SEGMENT_S = 5.0
"""Longest background segment laid down at one offset and gain."""
FADE_S = 0.05
"""Equal-power cross-fade between background segments."""
MAX_UNKNOWN_CLIPS = 2000
"""Non-keyword clips drawn from a split (seeded), at most (each is read once to find its speech)."""
StreamKind = Literal["keywords", "negative"]


@dataclass(frozen=True)
class StreamSettings:
    """How test streams are built from a split."""

    snr_db: float = 10.0
    """Keyword level: its power over its span against the background's power under it (dB)."""
    keywords_per_stream: int = 20
    """Keywords in each keyword stream; every keyword clip of the split is placed once."""
    negative_hours: float = 1.0
    """Length of the negative audio (background and non-keyword words, no keyword), in hours."""
    unknown_per_gap: int = 1
    """Non-keyword words placed before each keyword in the keyword streams."""
    unknown_per_minute: float = 12.0
    """Non-keyword words per minute of negative audio (on average)."""
    gap_s: float = 1.5
    """Background between two words: between gap_s and twice gap_s (seconds)."""
    level_spread_db: float = 3.0
    """Spread (+-dB) of the background segments' gain and of the non-keyword words' SNR."""
    background_dbfs: float = -35.0
    """RMS level of the background (dBFS) before the spread."""
    max_keyword_clips: int | None = None
    """Keyword clips used, at most (a seeded sample; None: all of the split's)."""
    negative_stream_minutes: float = 60.0
    """Negative audio comes as streams (files) of at most this many minutes."""
    block_s: float = 10.0
    """Length of the blocks that :meth:`StreamSet.blocks` yields (seconds)."""
    seed: int = 0
    """Seed of every choice: the same seed gives the same samples and the same truth."""

    def __post_init__(self) -> None:
        positive = ("keywords_per_stream", "gap_s", "negative_stream_minutes", "block_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"streams.{name} must be > 0, got {getattr(self, name)}")
        for name in ("negative_hours", "unknown_per_gap", "unknown_per_minute", "level_spread_db"):
            if getattr(self, name) < 0:
                raise ConfigError(f"streams.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_keyword_clips is not None and self.max_keyword_clips < 1:
            raise ConfigError(f"streams.max_keyword_clips must be >= 1 (or None for all), got {self.max_keyword_clips}")
        if not math.isfinite(self.snr_db) or not self.background_dbfs < 0:
            raise ConfigError("streams.snr_db must be finite and streams.background_dbfs below 0")


@dataclass(frozen=True)
class Truth:
    """Where a keyword was placed: its stream (``file``), span in seconds and label."""

    file: str
    start: float
    end: float
    label: str


@dataclass(frozen=True)
class Clip:
    """A word clip: its file, label and active span (samples at the streams' rate)."""

    path: str
    label: str
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, eq=False)
class Stream:
    """One stream's plan: its length, and each placed word's first sample, clip and SNR (sorted by start)."""

    name: str
    kind: StreamKind
    key: tuple[int, int]
    """Seed key of the stream's background."""
    samples: int
    starts: np.ndarray
    clips: np.ndarray
    snr_db: np.ndarray

    @property
    def words(self) -> int:
        return len(self.starts)


def active_span(wave: np.ndarray, sample_rate: int) -> tuple[int, int]:
    """``[start, stop)`` of a clip's active part: from the first to the last of its 20 ms frames
    (10 ms hop) within :data:`ACTIVE_FLOOR_DB` of its loudest and :data:`ACTIVE_OVER_NOISE_DB`
    above its noise floor, with :data:`ACTIVE_MARGIN_S` either side."""
    frame, hop = max(1, round(0.02 * sample_rate)), max(1, round(0.01 * sample_rate))
    if len(wave) <= frame:
        return 0, len(wave)
    energy = (np.lib.stride_tricks.sliding_window_view(wave.astype(np.float64), frame)[::hop] ** 2).mean(1)
    level = 10 * np.log10(energy + 1e-20)
    peak, floor = level.max(), np.percentile(level, 10)
    active = np.flatnonzero(level >= min(max(peak - ACTIVE_FLOOR_DB, floor + ACTIVE_OVER_NOISE_DB), peak - 6.0))
    return _with_margin(int(active[0]) * hop, int(active[-1]) * hop + frame, len(wave), sample_rate)


def segments_span(segments: Sequence[tuple[float, float]], samples: int, sample_rate: int) -> tuple[int, int] | None:
    """``[start, stop)`` of a clip's speech from its ``segments`` (seconds), with :data:`ACTIVE_MARGIN_S`
    either side; None when they hold no speech inside the clip."""
    spans = [(round(a * sample_rate), round(b * sample_rate)) for a, b in segments if b > a]
    spans = [(max(0, a), min(samples, b)) for a, b in spans if a < samples and b > 0]
    if not spans:
        return None
    return _with_margin(min(a for a, _ in spans), max(b for _, b in spans), samples, sample_rate)


def _with_margin(start: int, stop: int, samples: int, sample_rate: int) -> tuple[int, int]:
    margin = round(ACTIVE_MARGIN_S * sample_rate)
    return max(0, start - margin), min(samples, stop + margin)


@functools.lru_cache(maxsize=1024)
def _clip_audio(path: str, sample_rate: int, start: int, stop: int) -> np.ndarray:
    return read_audio(path, sample_rate, max_seconds=None).numpy()[start:stop].astype(np.float32)


def read_region(path: str, start: int, end: int | None, sample_rate: int) -> np.ndarray:
    """Mono samples ``[start, end)`` of a file (its own rate; ``end`` None: to the end), resampled."""
    try:
        samples, rate = sf.read(path, start=start, stop=end, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as error:
        raise AudioError(path, f"cannot read background audio: {error}") from None
    mono = np.ascontiguousarray(to_mono(samples))
    return resample(torch.from_numpy(mono), rate, sample_rate).numpy().astype(np.float32)


def _fade(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power fade-in and fade-out of ``length`` samples (their squares sum to 1)."""
    angle = (np.arange(length) + 0.5) / max(1, length) * (np.pi / 2)
    return np.sin(angle).astype(np.float32), np.cos(angle).astype(np.float32)


def _power(samples: np.ndarray) -> float:
    return float(np.mean(np.square(samples, dtype=np.float64))) if len(samples) else 0.0


class StreamSet:
    """Keyword streams and negative streams of one split, planned from a seed and rendered on demand.

    ``keyword_clips``: ``(path, label)`` of the keywords to place (each once, in a seeded order),
    or ``(path, label, segments)`` with where the speech is (seconds; None: unknown);
    ``unknown_clips``: paths of non-keyword words, or ``(path, label, segments)``; ``background``:
    ``(path, start, end)`` regions, in samples of each file at its own rate (``end`` None: to the
    end of the file). Clips that cannot be read are left out (:attr:`skipped`).
    """

    def __init__(
        self,
        keyword_clips: Sequence[tuple[str, str] | tuple[str, str, Any]],
        unknown_clips: Sequence[str | tuple[str, str, Any]],
        background: Sequence[tuple[str, int, int | None]],
        sample_rate: int,
        settings: StreamSettings = StreamSettings(),
    ) -> None:
        self.settings = settings
        self.sample_rate = int(sample_rate)
        self.skipped: list[str] = []
        order = np.random.default_rng([settings.seed, 0])
        keyword_clips = [keyword_clips[i] for i in order.permutation(len(keyword_clips))]
        if settings.max_keyword_clips is not None:
            keyword_clips = keyword_clips[: settings.max_keyword_clips]
        unknown_clips = [unknown_clips[i] for i in order.permutation(len(unknown_clips))][:MAX_UNKNOWN_CLIPS]
        self.keyword_clips = self._read_clips(keyword_clips)
        unknown_items = [(item, UNKNOWN) if isinstance(item, str) else item for item in unknown_clips]
        self.unknown_clips = self._read_clips(unknown_items)
        if not self.keyword_clips:
            raise UserInputError("no keyword clip to place in the test streams")
        self.clips = [*self.keyword_clips, *self.unknown_clips]
        self._longest = max(clip.length for clip in self.clips)
        self._read_background(background)
        self.streams = self._plan_keyword_streams() + self._plan_negative_streams()
        self._gains: dict[tuple[str, int], float] = {}

    @classmethod
    def from_datamodule(
        cls,
        datamodule: Any,
        split: str,
        class_names: Sequence[str],
        sample_rate: int,
        settings: StreamSettings = StreamSettings(),
    ) -> StreamSet:
        """The streams of a DataModule's ``split``: its clips of the keywords among ``class_names``
        (every class but ``_unknown_`` and ``_silence_``), its non-keyword words and its background.

        The non-keyword words are all of the split's (``datamodule.non_keyword_recordings(split)``,
        when the DataModule has it), not only the ``_unknown_`` sample it trains on."""
        records = datamodule.records
        chosen = [r for r, s in zip(records, datamodule.record_splits(records), strict=True) if s == split]
        keywords = set(class_names) - set(NON_KEYWORDS)
        own = getattr(datamodule, "non_keyword_recordings", None)
        others = (own(split) if callable(own) else []) or [r for r in chosen if r.label == UNKNOWN]
        return cls(
            [(r.source, r.label, r.segments) for r in chosen if r.label in keywords],
            [(r.source, UNKNOWN, r.segments) for r in others],
            background_regions(datamodule, split, chosen),
            sample_rate,
            settings,
        )

    # --- reading ---------------------------------------------------------------------------------
    def _read_clips(self, items: Sequence[tuple[str, str] | tuple[str, str, Any]]) -> list[Clip]:
        clips = []
        for path, label, *segments in items:
            try:
                wave = read_audio(path, self.sample_rate).numpy()
            except AudioError as error:
                self.skipped.append(str(error))
                continue
            known = segments_span(segments[0], len(wave), self.sample_rate) if segments and segments[0] else None
            clips.append(Clip(str(path), label, *(known or active_span(wave, self.sample_rate))))
        return clips

    def _read_background(self, background: Sequence[tuple[str, int, int | None]]) -> None:
        regions = []
        for path, start, end in background:
            samples = read_region(str(path), int(start), None if end is None else int(end), self.sample_rate)
            rms = math.sqrt(_power(samples))
            if rms > 1e-6:
                regions.append(samples / np.float32(rms))
        if not regions:
            raise UserInputError("no background audio (or only silence) to build test streams on")
        self.background_seconds = sum(len(r) for r in regions) / self.sample_rate
        """Unique background audio under the streams, in seconds (it loops when the streams are longer)."""
        self._fade = max(1, round(FADE_S * self.sample_rate))
        shortest = min(len(r) for r in regions)
        step = min(round(SEGMENT_S * self.sample_rate), max(round(0.5 * self.sample_rate), shortest - self._fade))
        self._step = step
        usable = [r for r in regions if len(r) >= step + self._fade] or regions
        self._regions = usable
        lengths = np.array([len(r) for r in usable], dtype=np.float64)
        self._region_weights = lengths / lengths.sum()
        self._level = 10 ** (self.settings.background_dbfs / 20)

    # --- planning --------------------------------------------------------------------------------
    def _gap(self, rng: np.random.Generator) -> int:
        return round(self.settings.gap_s * (1 + rng.uniform()) * self.sample_rate)

    def _plan_keyword_streams(self) -> list[Stream]:
        settings, streams = self.settings, []
        per = settings.keywords_per_stream
        unknown = len(self.keyword_clips) + np.arange(len(self.unknown_clips))
        for number, first in enumerate(range(0, len(self.keyword_clips), per)):
            rng = np.random.default_rng([settings.seed, 1, number])
            position, starts, clips, snrs = self._gap(rng), [], [], []
            for keyword in range(first, min(first + per, len(self.keyword_clips))):
                fillers = rng.choice(unknown, settings.unknown_per_gap) if len(unknown) else []
                for clip in [*fillers, keyword]:
                    starts.append(position)
                    clips.append(int(clip))
                    spread = rng.uniform(-1, 1) * settings.level_spread_db
                    snrs.append(settings.snr_db + (spread if clip != keyword else 0.0))
                    position += self.clips[int(clip)].length + self._gap(rng)
            name = f"keywords-{number:03d}"
            streams.append(self._stream(name, "keywords", (1, number), position, starts, clips, snrs))
        return streams

    def _plan_negative_streams(self) -> list[Stream]:
        settings = self.settings
        total = round(settings.negative_hours * 3600 * self.sample_rate)
        if total <= 0:
            return []
        count = math.ceil(total / (settings.negative_stream_minutes * 60 * self.sample_rate))
        bounds = np.linspace(0, total, count + 1).round().astype(np.int64)
        unknown = len(self.keyword_clips) + np.arange(len(self.unknown_clips))
        lengths = [clip.length for clip in self.unknown_clips]
        spacing = 60 / settings.unknown_per_minute if settings.unknown_per_minute > 0 else 0.0
        mean_word = float(np.mean(lengths)) / self.sample_rate if lengths else 0.0
        extra = max(0.0, spacing - mean_word - 1.5 * settings.gap_s)  # the gap's own mean is 1.5 gap_s
        streams = []
        for number in range(count):
            samples = int(bounds[number + 1] - bounds[number])
            rng = np.random.default_rng([settings.seed, 2, number])
            starts, clips, snrs = [], [], []
            position = self._gap(rng)
            while spacing and len(unknown):
                position += round(rng.exponential(extra) * self.sample_rate) if extra else 0
                clip = int(rng.choice(unknown))
                if position + self.clips[clip].length > samples:
                    break
                starts.append(position)
                clips.append(clip)
                snrs.append(settings.snr_db + rng.uniform(-1, 1) * settings.level_spread_db)
                position += self.clips[clip].length + self._gap(rng)
            name = f"negative-{number:03d}"
            streams.append(self._stream(name, "negative", (2, number), samples, starts, clips, snrs))
        return streams

    @staticmethod
    def _stream(name: str, kind: StreamKind, key: tuple[int, int], samples: int, starts, clips, snrs) -> Stream:
        return Stream(
            name, kind, key, int(samples), np.asarray(starts, np.int64), np.asarray(clips, np.int64),
            np.asarray(snrs, np.float64),
        )  # fmt: skip

    # --- what was planned ------------------------------------------------------------------------
    def stream(self, name: str) -> Stream:
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise KeyError(f"no stream named {name!r}")

    @property
    def keyword_streams(self) -> list[Stream]:
        return [s for s in self.streams if s.kind == "keywords"]

    @property
    def negative_streams(self) -> list[Stream]:
        return [s for s in self.streams if s.kind == "negative"]

    @property
    def keywords(self) -> list[str]:
        """The keywords placed, sorted."""
        return sorted({clip.label for clip in self.keyword_clips})

    def seconds(self, kind: StreamKind | None = None) -> float:
        """Length of the streams (of one kind), in seconds."""
        return sum(s.samples for s in self.streams if kind in (None, s.kind)) / self.sample_rate

    @property
    def truth(self) -> list[Truth]:
        """Every keyword placed: its stream, span (seconds) and label, in stream and time order."""
        truth = []
        for stream in self.keyword_streams:
            for start, index in zip(stream.starts.tolist(), stream.clips.tolist(), strict=True):
                clip = self.clips[index]
                if clip.label != UNKNOWN:
                    end = (start + clip.length) / self.sample_rate
                    truth.append(Truth(stream.name, start / self.sample_rate, end, clip.label))
        return truth

    def words_under(self, name: str, start: float, end: float) -> list[Clip]:
        """The words placed in stream ``name`` that overlap ``[start, end]`` (seconds), in time order."""
        stream = self.stream(name)
        low, high = round(start * self.sample_rate), round(end * self.sample_rate)
        first = int(np.searchsorted(stream.starts, low - self._longest, side="right"))
        last = int(np.searchsorted(stream.starts, high, side="right"))
        under = [(int(stream.starts[i]), self.clips[int(stream.clips[i])]) for i in range(first, last)]
        return [clip for at, clip in under if at <= high and at + clip.length >= low]

    def describe(self) -> dict[str, Any]:
        """What the streams hold, for reports."""
        negative = self.negative_streams
        return {
            "sample_rate": self.sample_rate,
            "keyword_streams": len(self.keyword_streams),
            "keywords_placed": len(self.truth),
            "keyword_stream_seconds": self.seconds("keywords"),
            "negative_streams": len(negative),
            "negative_seconds": self.seconds("negative"),
            "negative_unknown_words": int(sum(s.words for s in negative)),
            "unique_keyword_clips": len(self.keyword_clips),
            "unique_unknown_clips": len(self.unknown_clips),
            "unique_background_seconds": self.background_seconds,
            "skipped_clips": len(self.skipped),
            "settings": dataclasses.asdict(self.settings),
        }

    # --- rendering -------------------------------------------------------------------------------
    def background(self, stream: Stream, start: int, stop: int) -> np.ndarray:
        """The background of samples ``[start, stop)`` of ``stream``."""
        out = np.zeros(max(0, stop - start), np.float32)
        step, fade = self._step, self._fade
        fade_in, fade_out = _fade(fade)
        spread = self.settings.level_spread_db
        for segment in range(max(0, (start - fade) // step), (stop - 1) // step + 1):
            first, length = segment * step, step + fade
            if first >= stop or first + length <= start:
                continue
            rng = np.random.default_rng([self.settings.seed, 3, *stream.key, segment])
            region = self._regions[int(rng.choice(len(self._regions), p=self._region_weights))]
            offset = int(rng.integers(0, max(1, len(region) - length + 1)))
            gain = self._level * 10 ** (rng.uniform(-1, 1) * spread / 20)
            piece = np.take(region, np.arange(offset, offset + length), mode="wrap") * np.float32(gain)
            if segment > 0:
                piece[:fade] *= fade_in
            piece[-fade:] *= fade_out
            lo, hi = max(start, first), min(stop, first + length)
            out[lo - start : hi - start] += piece[lo - first : hi - first]
        return out

    def word_gain(self, stream: Stream, word: int) -> float:
        """The gain that puts word ``word`` of ``stream`` at its SNR over the background under it."""
        key = (stream.name, word)
        if key not in self._gains:
            clip = self.clips[int(stream.clips[word])]
            start = int(stream.starts[word])
            audio = _clip_audio(clip.path, self.sample_rate, clip.start, clip.stop)
            noise = _power(self.background(stream, start, start + clip.length))
            self._gains[key] = math.sqrt(noise * 10 ** (float(stream.snr_db[word]) / 10) / max(_power(audio), 1e-20))
        return self._gains[key]

    def render(
        self, stream: Stream | str, start: int = 0, stop: int | None = None, background: bool = True, words: bool = True
    ) -> np.ndarray:
        """Samples ``[start, stop)`` of a stream (float32, not clipped); ``background``/``words``:
        which layers to include (both: the stream)."""
        stream = self.stream(stream) if isinstance(stream, str) else stream
        stop = stream.samples if stop is None else min(stop, stream.samples)
        out = self.background(stream, start, stop) if background else np.zeros(max(0, stop - start), np.float32)
        if not words:
            return out
        first = int(np.searchsorted(stream.starts, start - self._longest, side="right"))
        last = int(np.searchsorted(stream.starts, stop, side="left"))
        for word in range(first, last):
            clip = self.clips[int(stream.clips[word])]
            at = int(stream.starts[word])
            lo, hi = max(start, at), min(stop, at + clip.length)
            if lo >= hi:
                continue
            audio = _clip_audio(clip.path, self.sample_rate, clip.start, clip.stop)
            out[lo - start : hi - start] += audio[lo - at : hi - at] * np.float32(self.word_gain(stream, word))
        return out

    def blocks(self, stream: Stream | str, block_s: float | None = None) -> Iterator[np.ndarray]:
        """A stream as consecutive blocks of ``block_s`` seconds (the last one shorter), rendered one
        at a time; together they are :meth:`render` of the whole stream."""
        stream = self.stream(stream) if isinstance(stream, str) else stream
        size = max(1, round((block_s or self.settings.block_s) * self.sample_rate))
        for start in range(0, stream.samples, size):
            yield self.render(stream, start, start + size)


def background_regions(datamodule: Any, split: str, records: Sequence[Any] = ()) -> list[tuple[str, int, int | None]]:
    """The background audio of a split: ``(path, start, end)`` regions (samples of each file).

    ``datamodule.background_recordings(split)`` (the regions of the corpus's background recordings
    that the split's ``_silence_`` clips are cut from, disjoint between splits) when the DataModule
    has them; else the split's ``_silence_`` clips (``records``), each whole.
    """
    own = getattr(datamodule, "background_recordings", None)
    if callable(own):
        try:
            regions = [(str(path), int(start), None if end is None else int(end)) for path, start, end in own(split)]
        except UserInputError:  # a corpus without background recordings
            regions = []
        if regions:
            return regions
    silence = [(r.source, 0, None) for r in records if r.label == SILENCE]
    if silence:
        return silence
    raise UserInputError(
        f"{type(datamodule).__name__}: no background audio for the {split} split (the DataModule has no "
        "background_recordings and the split no _silence_ clips); test streams need one"
    )
