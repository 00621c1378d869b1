"""From a posterior track to keyword events: smoothing, per-class thresholds, one event per utterance.

:func:`detect_events` (pure numpy, deterministic):

1. Each class's posterior is smoothed with a centred moving average over ``smoothing_s`` (the odd
   number of hops nearest to it, at least one; near the ends, over the hops there are).
2. A class is above threshold where its smoothed posterior is ``>=`` its threshold; each maximal run
   of hops above threshold is a candidate event.
3. Refractory time: runs of one class that start less than ``refractory_s`` after the previous one
   ended are one event (a keyword whose posterior dips below threshold mid-word, or the same
   utterance seen by overlapping windows, is reported once).
4. An event's score is the peak of its smoothed posterior; its span is the audio of the windows
   whose smoothed posterior stayed above threshold, from the start of the first (its time minus
   ``window_s``) to the end of the last, clipped to the audio.

Classes in ``ignore`` (``_unknown_`` and ``_silence_`` by default: "no keyword") are never reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from speechrnn.spotting.settings import IGNORED_CLASSES
from speechrnn.spotting.track import PosteriorTrack


@dataclass(frozen=True)
class Event:
    """A keyword found in a file: ``label`` between ``start`` and ``end`` (seconds), peak smoothed
    posterior ``score``."""

    file: str
    start: float
    end: float
    label: str
    score: float


def smoothing_width(smoothing_s: float, hop_s: float) -> int:
    """Hops averaged by :func:`smooth`: the odd number nearest to ``smoothing_s / hop_s`` (rounded up
    to odd), at least 1."""
    width = max(1, int(round(smoothing_s / hop_s))) if hop_s > 0 else 1
    return width if width % 2 else width + 1


def smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average of ``(N, C)`` over ``width`` (odd) rows; near the ends the average is
    over the rows that exist. Summed in float64, returned in float32 (the posteriors' precision, so a
    threshold equal to a posterior is reached)."""
    values = np.asarray(values, dtype=np.float64)
    if width <= 1 or len(values) == 0:
        return values.astype(np.float32)
    half = width // 2
    padded = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    rows = np.arange(len(values))
    low, high = np.clip(rows - half, 0, len(values)), np.clip(rows + half + 1, 0, len(values))
    return ((padded[high] - padded[low]) / (high - low)[:, None]).astype(np.float32)


def runs(above: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` row of each maximal run of True in ``above`` (inclusive)."""
    edges = np.diff(np.concatenate([[0], above.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist(), strict=True))


def detect_events(
    track: PosteriorTrack,
    thresholds: Mapping[str, float] | float,
    *,
    smoothing_s: float = 0.3,
    refractory_s: float = 1.0,
    ignore: Sequence[str] = IGNORED_CLASSES,
    file: str = "",
) -> list[Event]:
    """Keyword events of ``track`` (see the module's docstring), in order of start time, then label.

    ``thresholds``: one threshold for every class, or per class (a class missing from the mapping is
    not reported; a label that is not one of the track's classes is a ``ValueError``). ``file`` is
    copied into every event.
    """
    if smoothing_s < 0 or refractory_s < 0:
        raise ValueError(f"smoothing_s and refractory_s must be >= 0, got {smoothing_s} and {refractory_s}")
    if isinstance(thresholds, Mapping):
        unknown = sorted(set(thresholds) - set(track.class_names))
        if unknown:
            raise ValueError(f"thresholds for classes the track does not have: {unknown}")
        per_class = dict(thresholds)
    else:
        per_class = dict.fromkeys(track.class_names, float(thresholds))
    times = np.asarray(track.times, dtype=np.float64)
    smoothed = smooth(track.probabilities, smoothing_width(smoothing_s, track.hop_s))
    duration = track.duration
    events = []
    for column, label in enumerate(track.class_names):
        if label in ignore or label not in per_class:
            continue
        merged: list[list[float]] = []  # [first time, last time, score]
        for first, last in runs(smoothed[:, column] >= np.float32(per_class[label])):
            score = float(smoothed[first : last + 1, column].max())
            if merged and times[first] - merged[-1][1] < refractory_s:
                merged[-1][1], merged[-1][2] = times[last], max(merged[-1][2], score)
            else:
                merged.append([times[first], times[last], score])
        for first_time, last_time, score in merged:
            start = min(max(0.0, first_time - track.window_s), duration)
            events.append(Event(file, start, min(max(last_time, start), duration), label, score))
    return sorted(events, key=lambda e: (e.start, e.label, e.end))
