"""What a checkpoint says about spotting: its calibration (temperature, per-class thresholds) and
the length of the clips it was trained on (the scoring window).

Calibration writes ``data_config["spotting"]`` into a checkpoint::

    {"temperature": 1.3, "thresholds": {"yes": 0.62, "no": 0.71}, "target_fa_per_hour": 1.0}

and spotting reads it back with :func:`stored_spotting`. A model without it is uncalibrated:
spotting then uses :data:`DEFAULT_THRESHOLD` on smoothed posteriors for every class, at
temperature 1, and says so with a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from speechrnn.errors import ConfigError

DEFAULT_THRESHOLD = 0.5
"""Threshold on smoothed posteriors for an uncalibrated model: a class must win over all the others
together."""

DEFAULT_WINDOW_S = 1.0
"""Scoring window when the checkpoint records no training clip length (Speech Commands' clips)."""

IGNORED_CLASSES: tuple[str, ...] = ("_unknown_", "_silence_")
"""Classes that stand for "no keyword": scored, never reported as events."""

DETECTION_DEFAULTS: dict[str, Any] = {"hop_s": 0.1, "smoothing_s": 0.3, "refractory_s": 1.0, "mode": "auto"}
"""How tracks are scored and read when neither the user nor a calibration says otherwise (the window:
:func:`training_window_seconds`)."""


@dataclass(frozen=True)
class SpottingCalibration:
    """A model's spotting calibration: softmax temperature and per-class thresholds."""

    temperature: float = 1.0
    thresholds: dict[str, float] = field(default_factory=dict)
    """Per-class thresholds on smoothed posteriors; empty for an uncalibrated model."""
    target_fa_per_hour: float | None = None
    """The false-alarm rate the thresholds were chosen for, when calibrated."""
    calibrated: bool = False
    detection: dict[str, Any] = field(default_factory=dict)
    """The detection settings the thresholds were chosen with, those stored of ``hop_s``,
    ``window_s``, ``smoothing_s``, ``refractory_s`` and ``mode``: spotting uses them unless told
    otherwise, since a threshold holds for the smoothing and hop it was chosen at."""

    def threshold(self, label: str) -> float:
        """The class's threshold (:data:`DEFAULT_THRESHOLD` for a class calibration left out)."""
        return self.thresholds.get(label, DEFAULT_THRESHOLD)


def stored_spotting(
    data_config: Mapping[str, Any], name: str = "the checkpoint", warn: bool = True
) -> SpottingCalibration:
    """The calibration stored in a checkpoint's ``data_config`` (``model.data_config``); when there is
    none, the defaults (temperature 1, :data:`DEFAULT_THRESHOLD` for every class) with a warning that
    the model is uncalibrated. A malformed entry is a :class:`ConfigError` naming ``name``."""
    stored = data_config.get("spotting")
    if not stored:
        if warn:
            warnings.warn(
                f"{name} is not calibrated for spotting (no data_config['spotting']): every class uses the default "
                f"threshold {DEFAULT_THRESHOLD} on smoothed posteriors at temperature 1; calibrate it to choose "
                "thresholds for a false-alarm rate",
                stacklevel=2,
            )
        return SpottingCalibration()
    if not isinstance(stored, Mapping):
        raise ConfigError(f"{name}: data_config['spotting'] must be a mapping, got {type(stored).__name__}")
    temperature = _positive(stored.get("temperature", 1.0), f"{name}: spotting temperature")
    stored_thresholds = stored.get("thresholds") or {}
    thresholds = {str(k): _probability(v, f"{name}: spotting threshold of {k!r}") for k, v in stored_thresholds.items()}
    target = stored.get("target_fa_per_hour")
    detection = {key: stored[key] for key in (*DETECTION_DEFAULTS, "window_s") if stored.get(key) is not None}
    for key in ("hop_s", "window_s"):
        if key in detection:
            detection[key] = _positive(detection[key], f"{name}: spotting {key}")
    target = None if target is None else float(target)
    return SpottingCalibration(temperature, thresholds, target, calibrated=True, detection=detection)


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def _probability(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{what} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_threshold(value: Any, what: str = "threshold") -> float:
    """``value`` as a threshold: a number in [0, 1] (a :class:`ConfigError` saying ``what`` is wrong)."""
    return _probability(value, what)


def check_class_thresholds(thresholds: Mapping[str, Any], class_names: list[str]) -> dict[str, float]:
    """Per-class thresholds checked against the model's classes: each in [0, 1], every label one of
    ``class_names`` (a :class:`ConfigError` naming what is wrong)."""
    unknown = sorted(set(thresholds) - set(class_names), key=str)
    if unknown:
        raise ConfigError(f"thresholds for unknown classes {unknown}; the model's classes are {', '.join(class_names)}")
    return {label: _probability(value, f"threshold of {label!r}") for label, value in thresholds.items()}


def training_window_seconds(data_config: Mapping[str, Any]) -> float | None:
    """The length of the clips a model was trained on, when its checkpoint records it: the calibrated
    ``spotting.window_s``, else ``clip_seconds`` (seconds, or ``{"median": s, "max": s}``, the median
    preferred); None when it records neither."""
    stored = data_config.get("spotting")
    if isinstance(stored, Mapping) and stored.get("window_s"):
        return float(stored["window_s"])
    clips = data_config.get("clip_seconds")
    if isinstance(clips, Mapping):
        clips = clips.get("median") or clips.get("max")
    return float(clips) if clips else None
