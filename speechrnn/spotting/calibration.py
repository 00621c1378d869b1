"""Calibrating a keyword spotter on the validation split: a softmax temperature and per-class
thresholds for a target false-alarm rate, written into a new checkpoint.

- :func:`fit_temperature`: the temperature minimising the negative log-likelihood of the validation
  clips' outputs (a bounded 1-D search over its logarithm). The split's probabilities are enough:
  their logarithms are the logits up to a per-clip constant, which the softmax ignores.
- :func:`choose_thresholds`: on validation streams (:mod:`speechrnn.spotting.streams` on the val
  split) scored at that temperature, each keyword's threshold is the lowest (not below
  ``min_threshold``) that keeps its own false alarms within its share of the budget, ``target x
  hours / keywords`` false alarms (rounded down), counted with the other keywords switched off;
  :func:`choose_smoothing` does so at a few posterior smoothing lengths and keeps the one that misses
  the fewest validation keywords.
- :func:`write_calibrated`: the checkpoint again, atomically under a new name, with
  ``data_config["spotting"] = {"temperature", "thresholds", "target_fa_per_hour", ...}`` (the window,
  hop, smoothing and refractory period it was calibrated with, and what calibration measured); the
  original is not touched.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from speechrnn.errors import ConfigError, UserInputError
from speechrnn.features import FeatureSettings
from speechrnn.io import atomic_write_bytes, read_checkpoint
from speechrnn.normalization import normalization_of
from speechrnn.spotting.metrics import match_events, operating_point
from speechrnn.spotting.streams import NON_KEYWORDS, StreamSet, StreamSettings

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""Range searched for the temperature."""
NEVER = 1.0
"""The highest threshold: calibration gives it to a keyword whose false alarms no threshold keeps in its share."""
THRESHOLD_STEP = 1e-6
"""A threshold chosen to silence an event is this much above the event's score."""


@dataclass(frozen=True)
class SpottingSettings:
    """How streams are scored, events detected and matched, and thresholds calibrated."""

    target_fa_per_hour: float = 0.5
    """False alarms per hour that calibration's thresholds aim at (on validation streams)."""
    hop_s: float = 0.1
    """Time between two scored windows (seconds)."""
    window_s: float | None = None
    """Scoring window (seconds); None: the training clip length the checkpoint records, else 1 s."""
    smoothing_s: float = 0.3
    """Moving average of the posteriors before thresholding (seconds)."""
    refractory_s: float = 1.0
    """Runs above threshold of one keyword closer than this are one event (seconds)."""
    tolerance_s: float = 0.5
    """An event hits a keyword when it overlaps the keyword's span widened by this much (seconds)."""
    min_threshold: float = 0.5
    """Lowest threshold calibration gives a keyword."""
    calibration_negative_hours: float = 1.0
    """Negative audio of the validation streams that thresholds are chosen on (hours)."""
    batch_size: int = 64
    """Windows scored per batch."""
    mode: Literal["auto", "window", "stream"] = "auto"
    """How streams are scored (``speechrnn.spotting.scoring``): every window as a clip, one recurrent
    pass (unidirectional models), or the one exact to training."""
    smoothing_choices: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    """Smoothing lengths (seconds) calibration tries besides ``smoothing_s`` on the validation streams,
    keeping the one whose thresholds miss the fewest keywords there (ties: ``smoothing_s``, else the
    shortest); the tracks are scored once. Empty: ``smoothing_s`` as given. On the embedded corpus
    validation chose 0.5 over 0.3, and the test streams' false rejections at 0.5 false alarms per hour
    fell from 6.3 % to 4.8 % (benchmarks/README.md, "Keyword spotting")."""

    def __post_init__(self) -> None:
        if not self.hop_s > 0:
            raise ConfigError(f"streams.hop_s must be > 0, got {self.hop_s}")
        for name in ("target_fa_per_hour", "smoothing_s", "refractory_s", "tolerance_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"streams.{name} must be >= 0, got {getattr(self, name)}")
        if self.window_s is not None and not self.window_s > 0:
            raise ConfigError(f"streams.window_s must be > 0 (or None), got {self.window_s}")
        if not 0 <= self.min_threshold <= 1:
            raise ConfigError(f"streams.min_threshold must be in [0, 1], got {self.min_threshold}")
        if any(not (math.isfinite(length) and length >= 0) for length in self.smoothing_choices):
            raise ConfigError(f"streams.smoothing_choices must be lengths >= 0 (seconds), got {self.smoothing_choices}")
        if not self.calibration_negative_hours >= 0 or self.batch_size < 1:
            raise ConfigError("streams.calibration_negative_hours must be >= 0 and streams.batch_size >= 1")


# --- temperature -------------------------------------------------------------------------------
def negative_log_likelihood(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against class indices ``targets``."""
    tensor = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    return float(F.cross_entropy(tensor / temperature, torch.as_tensor(np.asarray(targets, dtype=np.int64))))


def fit_temperature(logits: np.ndarray, targets: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature in ``bounds`` minimising :func:`negative_log_likelihood` (logits, or
    log-probabilities: the same); 1.0 when the likelihood has no minimum inside them
    (:func:`temperature_fit`)."""
    temperature, interior = temperature_fit(logits, targets, bounds)
    return temperature if interior else 1.0


def temperature_fit(
    logits: np.ndarray, targets: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> tuple[float, bool]:
    """The temperature in ``bounds`` minimising :func:`negative_log_likelihood`, and whether that
    minimum lies inside them. It does not when the model separates the clips perfectly: every sharper
    temperature then fits better, down to probabilities of exactly 0 and 1, which leave thresholds
    nothing to tell apart (calibration keeps 1.0 then)."""
    from scipy.optimize import minimize_scalar

    if len(targets) == 0:
        raise UserInputError("no validation clips to fit the temperature on")
    logits = np.asarray(logits, dtype=np.float64)
    result = minimize_scalar(
        lambda u: negative_log_likelihood(logits, targets, math.exp(u)),
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-5},
    )
    temperature = float(math.exp(result.x))
    best = negative_log_likelihood(logits, targets, temperature)
    interior = all(negative_log_likelihood(logits, targets, bound) > best + 1e-9 for bound in bounds)
    return temperature, interior


def clip_log_probabilities(
    model: Any, datamodule: Any, split: str = "val", device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities ``(N, C)`` of every clip of ``split`` (the training path's features) and
    their targets ``(N,)``."""
    from speechrnn.split_predictions import predict_split

    targets, probabilities, *_ = predict_split(model, datamodule, split, device)
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-45, None)), np.asarray(targets)


# --- streams through the model -----------------------------------------------------------------
def stream_rate(model: Any) -> int:
    """The sample rate of the model's front end (the streams are built at it)."""
    features = model.data_config.get("features")
    if not features:
        raise UserInputError("the checkpoint has no audio feature settings: spotting needs an audio model")
    return FeatureSettings.from_dict(features).rate


def score_streams(
    model: Any,
    streams: StreamSet,
    settings: SpottingSettings,
    temperature: float = 1.0,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The posterior track of every stream, by name, each rendered block by block. A model normalised
    per speaker is given each stream's own statistics (a first pass, as ``score_file`` does for a file)."""
    from speechrnn.spotting.scoring import score_blocks, speaker_statistics

    tracks = {}
    per_speaker = normalization_of(model.data_config) == "speaker"
    for stream in streams.streams:
        began = time.perf_counter()
        speaker = None
        if per_speaker:
            speaker = speaker_statistics(model, streams.blocks(stream), streams.sample_rate, settings.window_s)
        tracks[stream.name] = score_blocks(
            model, streams.blocks(stream), streams.sample_rate, hop_s=settings.hop_s, window_s=settings.window_s,
            mode=settings.mode, batch_size=settings.batch_size, temperature=temperature, speaker=speaker, device=device,
        )  # fmt: skip
        if log is not None:
            seconds = stream.samples / streams.sample_rate
            log(f"scored {stream.name} ({seconds / 60:.1f} min) in {time.perf_counter() - began:.1f} s")
    return tracks


class Detector:
    """Events of a set of posterior tracks (by name) at any thresholds: each track's posteriors are
    smoothed once (``settings.smoothing_s``, as :func:`~speechrnn.spotting.events.detect_events`
    smooths them), then every call only thresholds them."""

    def __init__(self, tracks: Mapping[str, Any], settings: SpottingSettings) -> None:
        from speechrnn.spotting.events import smooth, smoothing_width

        self.tracks = {
            name: dataclasses.replace(
                track, probabilities=smooth(track.probabilities, smoothing_width(settings.smoothing_s, track.hop_s))
            )
            for name, track in tracks.items()
        }
        self.refractory_s = settings.refractory_s
        self.class_names = list(next(iter(tracks.values())).class_names) if tracks else []

    def __call__(self, thresholds: Mapping[str, float] | float) -> list[Any]:
        """The events of every track (``file``: the track's name) at ``thresholds``."""
        from speechrnn.spotting.events import detect_events

        events = []
        for name, track in self.tracks.items():
            events += detect_events(
                track, dict(thresholds) if isinstance(thresholds, Mapping) else thresholds, smoothing_s=0.0,
                refractory_s=self.refractory_s, ignore=NON_KEYWORDS, file=name,
            )  # fmt: skip
        return events


# --- thresholds --------------------------------------------------------------------------------
def lowest_threshold(false_alarm_scores: Callable[[float], Sequence[float]], allowed: int, floor: float) -> float:
    """The lowest threshold in ``[floor, 1]`` at which ``false_alarm_scores(threshold)`` (the scores of
    the false alarms left) holds at most ``allowed``: raised past the score of the false alarm that
    is one too many until few enough are left, then bisected if raising stops helping; 1 when even
    that leaves too many."""
    threshold = floor
    for _ in range(100):
        scores = sorted(false_alarm_scores(threshold), reverse=True)
        if len(scores) <= allowed:
            return threshold
        raised = min(NEVER, float(scores[allowed]) + THRESHOLD_STEP)
        if raised <= threshold:
            break
        threshold = raised
    if len(false_alarm_scores(NEVER)) > allowed:
        return NEVER
    low, high = threshold, NEVER
    for _ in range(30):
        middle = (low + high) / 2
        if len(false_alarm_scores(middle)) <= allowed:
            high = middle
        else:
            low = middle
    return high


def choose_thresholds(
    detect: Detector, truth: Sequence[Any], hours: float, settings: SpottingSettings
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Per-keyword thresholds for ``settings.target_fa_per_hour`` on the tracks of ``detect``
    (``hours`` long, holding ``truth``): see the module's docstring. Returns them and, per keyword,
    the false alarms it was allowed and has (alone) at its threshold."""
    keywords = [name for name in detect.class_names if name not in NON_KEYWORDS]
    allowed = math.floor(settings.target_fa_per_hour * hours / max(1, len(keywords)) + 1e-9)
    thresholds, details = {}, {}
    for keyword in keywords:
        own_truth = [t for t in truth if t.label == keyword]

        def scores(threshold: float, keyword: str = keyword, own_truth: list = own_truth) -> list[float]:
            events = detect({keyword: threshold})  # the other keywords are not reported
            return [e.score for e in match_events(events, own_truth, settings.tolerance_s).false_alarms]

        thresholds[keyword] = lowest_threshold(scores, allowed, settings.min_threshold)
        left = len(scores(thresholds[keyword]))
        details[keyword] = {"threshold": thresholds[keyword], "allowed": allowed, "false_alarms": left,
                            "met": left <= allowed}  # fmt: skip
    return thresholds, details


def choose_smoothing(
    tracks: Mapping[str, Any], truth: Sequence[Any], hours: float, settings: SpottingSettings
) -> tuple[SpottingSettings, Detector, dict[str, float], dict[str, dict[str, Any]], dict[str, dict[str, float]]]:
    """Thresholds (:func:`choose_thresholds`) at ``settings.smoothing_s`` and at each of
    ``settings.smoothing_choices``, and the smoothing whose thresholds, on these tracks, stay within
    the target false-alarm rate and miss the fewest keywords (then: fewest false alarms, ``smoothing_s``,
    the shortest). Returns the settings with that smoothing, its detector, thresholds and per-keyword
    details, and what each length gave (``{"0.5": {"frr", "fa_per_hour"}}``)."""
    lengths = sorted({float(settings.smoothing_s), *(float(length) for length in settings.smoothing_choices)})
    best, tried = None, {}
    for length in lengths:
        trial = dataclasses.replace(settings, smoothing_s=length)
        detect = Detector(tracks, trial)
        thresholds, details = choose_thresholds(detect, truth, hours, trial)
        point = operating_point(detect(thresholds), truth, hours, trial.tolerance_s)
        tried[f"{length:g}"] = {"frr": point.frr, "fa_per_hour": point.fa_per_hour}
        over = point.fa_per_hour > settings.target_fa_per_hour + 1e-9
        key = (over, point.misses, point.false_alarms, length != float(settings.smoothing_s))  # ties: the shorter
        if best is None or key < best[0]:
            best = (key, trial, detect, thresholds, details)
    assert best is not None
    return (*best[1:], tried)


def calibrate(
    model: Any,
    datamodule: Any,
    settings: SpottingSettings = SpottingSettings(),
    stream_settings: StreamSettings = StreamSettings(),
    split: str = "val",
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The spotting calibration of ``model`` on ``datamodule``'s ``split``: the temperature fitted on
    its clips, then per-keyword thresholds chosen on streams built from it (``stream_settings`` with
    ``settings.calibration_negative_hours`` of negative audio). Returns ``data_config["spotting"]``."""
    log_probabilities, targets = clip_log_probabilities(model, datamodule, split, device)
    fitted, interior = temperature_fit(log_probabilities, targets)
    temperature = fitted if interior else 1.0
    streams = StreamSet.from_datamodule(
        datamodule, split, model.class_names, stream_rate(model),
        dataclasses.replace(stream_settings, negative_hours=settings.calibration_negative_hours),
    )  # fmt: skip
    if log is not None:
        kept = "" if interior else f" (no minimum above {fitted:.3g}: the clips are separated perfectly; 1 kept)"
        log(
            f"calibration: temperature {temperature:.3f}{kept} on {len(targets)} {split} clips; scoring {split} streams"
        )
    tracks = score_streams(model, streams, settings, temperature, device, log)
    hours = streams.seconds() / 3600
    truth = streams.truth
    settings, detect, thresholds, details, tried = choose_smoothing(tracks, truth, hours, settings)
    check = operating_point(detect(thresholds), truth, hours, settings.tolerance_s)
    track = next(iter(tracks.values()))
    spotting: dict[str, Any] = {
        "temperature": temperature,
        "thresholds": thresholds,
        "target_fa_per_hour": float(settings.target_fa_per_hour),
        "hop_s": float(track.hop_s),
        "smoothing_s": float(settings.smoothing_s),
        "refractory_s": float(settings.refractory_s),
        "mode": track.mode,
        "calibration": {
            "split": split,
            "clips": int(len(targets)),
            "nll_at_temperature_1": negative_log_likelihood(log_probabilities, targets),
            "fitted_temperature": fitted,
            "nll": negative_log_likelihood(log_probabilities, targets, temperature),
            "stream_hours": hours,
            "negative_hours": streams.seconds("negative") / 3600,
            "keywords_placed": len(truth),
            "unique_background_seconds": streams.background_seconds,
            "false_alarms": check.false_alarms,
            "fa_per_hour": check.fa_per_hour,
            "frr": check.frr,
            "per_keyword": details,
            "smoothing_tried": tried,
            "min_threshold": float(settings.min_threshold),
            "seed": stream_settings.seed,
            "snr_db": float(stream_settings.snr_db),
        },
    }
    if track.mode == "window":
        spotting["window_s"] = float(track.window_s)
    return spotting


def write_calibrated(
    checkpoint: str | os.PathLike, spotting: Mapping[str, Any], out: str | os.PathLike | None = None
) -> Path:
    """A copy of ``checkpoint`` with ``data_config["spotting"] = spotting``, written atomically to
    ``out`` (default: ``calibrated.ckpt`` beside it); the original is never written."""
    source = Path(checkpoint)
    target = Path(out) if out is not None else source.with_name("calibrated.ckpt")
    if target.resolve() == source.resolve():
        raise ConfigError(f"{target}: the calibrated checkpoint must not overwrite the one it comes from")
    contents = read_checkpoint(source)
    contents["data_config"] = {**(contents.get("data_config") or {}), "spotting": _plain(spotting)}
    buffer = io.BytesIO()
    torch.save(contents, buffer)
    return atomic_write_bytes(target, buffer.getvalue())


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers (a checkpoint loads with ``weights_only``)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
