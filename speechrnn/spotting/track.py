"""The posterior track: a model's class probabilities over time (:mod:`speechrnn.spotting.scoring`
computes it; :mod:`speechrnn.spotting.events` reads it). Plain numpy, so reading tracks needs no torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PosteriorTrack:
    """Class probabilities over time."""

    times: np.ndarray
    """``(N,)`` seconds: the end of each scored window."""
    probabilities: np.ndarray
    """``(N, C)`` float32, softmax over the model's classes (temperature applied)."""
    class_names: list[str]
    window_s: float
    """Audio each probability describes (ending at its time)."""
    hop_s: float
    """Time between consecutive windows."""
    duration_s: float | None = None
    """Length of the audio scored (None: unknown, taken as the last time)."""
    mode: str = "window"
    """How the track was scored: ``window`` or ``stream``."""

    @property
    def duration(self) -> float:
        return float(self.duration_s if self.duration_s is not None else (self.times[-1] if len(self.times) else 0.0))
