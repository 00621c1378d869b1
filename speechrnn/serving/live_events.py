"""Keyword events from a posterior track that grows row by row: the events
:func:`~speechrnn.spotting.events.detect_events` finds on the whole track (same smoothing, thresholds,
refractory merging and spans), each given out as soon as no later row can change it.

A row's smoothed value is final once the ``smoothing // 2`` rows after it have arrived; an event is
final once a row above its last by at least ``refractory_s`` is below threshold (a later run can no
longer merge into it). :meth:`LiveEvents.finish` ends the track (its last rows smoothed over the rows
there are, as offline) and gives out the events still open. Memory stays flat: only the rows the
smoothing still needs are kept."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from speechrnn.spotting.events import Event, smoothing_width
from speechrnn.spotting.settings import IGNORED_CLASSES


class LiveEvents:
    """Rows in (:meth:`push`), final events out, for the classes of ``thresholds`` not in ``ignore``."""

    def __init__(
        self,
        class_names: Sequence[str],
        thresholds: Mapping[str, float],
        *,
        hop_s: float,
        window_s: float,
        smoothing_s: float = 0.3,
        refractory_s: float = 1.0,
        ignore: Sequence[str] = IGNORED_CLASSES,
        file: str = "",
    ) -> None:
        self.half = smoothing_width(smoothing_s, hop_s) // 2
        self.window_s, self.refractory_s, self.file = window_s, refractory_s, file
        self.columns = [
            (column, label, np.float32(thresholds[label]))
            for column, label in enumerate(class_names)
            if label in thresholds and label not in ignore
        ]
        self.times = np.zeros(0, dtype=np.float64)
        self.rows = np.zeros((0, len(class_names)), dtype=np.float64)
        self.first = 0
        """Index of ``rows[0]`` in the whole track."""
        self.total = 0
        """Rows received."""
        self.done = 0
        """Rows whose smoothed values have been read."""
        self.open: dict[str, list[float]] = {}
        """Per label, the event being built: ``[first time, last time, score]``."""
        self.running: set[str] = set()
        """Labels whose last row read was above threshold."""

    def push(self, times: np.ndarray, probabilities: np.ndarray) -> list[Event]:
        """Add rows (``times (n,)`` seconds, ``probabilities (n, C)``); the events they make final."""
        self.times = np.concatenate([self.times, np.asarray(times, dtype=np.float64)])
        self.rows = np.concatenate([self.rows, np.asarray(probabilities, dtype=np.float64)])
        self.total += len(times)
        return self._read(self.total - self.half)

    def finish(self) -> list[Event]:
        """The track has ended: the events of its last rows and every event still open."""
        events = self._read(self.total)
        for label in [label for _, label, _ in self.columns]:
            if label in self.open:
                events.append(self._event(label, self.open.pop(label)))
        return sorted(events, key=lambda e: (e.start, e.label, e.end))

    def _read(self, stop: int) -> list[Event]:
        events = []
        for row in range(self.done, stop):
            low, high = max(0, row - self.half), min(self.total, row + self.half + 1)
            smoothed = (self.rows[low - self.first : high - self.first].sum(0) / (high - low)).astype(np.float32)
            time = float(self.times[row - self.first])
            for column, label, threshold in self.columns:
                current = self.open.get(label)
                if smoothed[column] >= threshold:
                    if label not in self.running:  # a run starts: it merges into the open event or follows it
                        self.running.add(label)
                        if current is not None and time - current[1] >= self.refractory_s:
                            events.append(self._event(label, self.open.pop(label)))
                            current = None
                        if current is None:
                            self.open[label] = current = [time, time, -np.inf]
                    current[1], current[2] = time, max(current[2], float(smoothed[column]))
                else:
                    self.running.discard(label)
                    if current is not None and time - current[1] >= self.refractory_s:
                        events.append(self._event(label, self.open.pop(label)))
        self.done = max(self.done, stop)
        keep = max(0, self.done - self.half) - self.first
        if keep > 0:
            self.times, self.rows, self.first = self.times[keep:], self.rows[keep:], self.first + keep
        return events

    def _event(self, label: str, state: list[float]) -> Event:
        start = max(0.0, state[0] - self.window_s)
        return Event(self.file, start, max(state[1], start), label, state[2])
