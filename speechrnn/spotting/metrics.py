"""Scoring a keyword spotter on streams with known truth: events matched to the keywords placed,
false rejections at given false-alarm rates, and the DET curve.

- :func:`match_events`: an event is a hit when its label is the truth's and it overlaps the truth's
  span extended by ``tolerance_s`` on both sides; each truth is matched once (the earliest truth
  first, to the matching event that ends first), and every other event is a false alarm (a second
  event on the same keyword included).
- :func:`sweep`: operating points (false rejection rate, false alarms per hour) over a family of
  thresholds, one parameter in logit space: one threshold for every keyword (:func:`global_thresholds`)
  or per-class thresholds moved together (:func:`shifted_thresholds`), with the crossing of each
  requested false-alarm rate refined by bisection. False alarms per hour count every false alarm of
  the streams scored (keyword streams and negative audio) over their whole length.
- :func:`keyword_sweeps`: each keyword's own curve, its threshold alone against its own false alarms.
- :func:`det_curve_png`: false rejection rate against false alarms per hour (matplotlib, Agg).
"""

from __future__ import annotations

import functools
import io
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

FA_RATES = (0.5, 1.0, 2.0)
"""False alarms per hour at which false rejection rates are reported."""
SWEEP_GRID = tuple(np.round(np.arange(-4.0, 16.01, 0.25), 2).tolist())
"""Sweep parameters (logit of the threshold, or its shift): thresholds from 0.018 to 0.9999999."""


class Timed(Protocol):
    file: str
    start: float
    end: float
    label: str


@dataclass
class Matching:
    """Events against truth: the hits (event, truth), the missed truths and the false alarms."""

    hits: list[tuple[Any, Any]] = field(default_factory=list)
    misses: list[Any] = field(default_factory=list)
    false_alarms: list[Any] = field(default_factory=list)

    @property
    def truths(self) -> int:
        return len(self.hits) + len(self.misses)

    @property
    def frr(self) -> float:
        """Missed keywords over keywords placed (0 when none were placed)."""
        return len(self.misses) / self.truths if self.truths else 0.0

    def frr_per_keyword(self) -> dict[str, float]:
        """Each placed keyword's false rejection rate, by label."""
        placed, missed = defaultdict(int), defaultdict(int)
        for _, truth in self.hits:
            placed[truth.label] += 1
        for truth in self.misses:
            placed[truth.label] += 1
            missed[truth.label] += 1
        return {label: missed[label] / placed[label] for label in sorted(placed)}


def match_events(events: Iterable[Timed], truth: Iterable[Timed], tolerance_s: float = 0.5) -> Matching:
    """Match ``events`` (``file``, ``start``, ``end``, ``label``, ``score``) to ``truth`` (``file``,
    ``start``, ``end``, ``label``): see the module's docstring."""
    if tolerance_s < 0:
        raise ValueError(f"tolerance_s must be >= 0, got {tolerance_s}")
    events = list(events)
    candidates: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, event in enumerate(events):
        candidates[(event.file, event.label)].append(index)
    used: set[int] = set()
    matching = Matching()
    for item in sorted(truth, key=lambda t: (t.file, t.start, t.end)):
        low, high = item.start - tolerance_s, item.end + tolerance_s
        fitting = [
            i for i in candidates.get((item.file, item.label), ())
            if i not in used and events[i].start <= high and events[i].end >= low
        ]  # fmt: skip
        if not fitting:
            matching.misses.append(item)
            continue
        chosen = min(fitting, key=lambda i: (events[i].end, -events[i].score, i))
        used.add(chosen)
        matching.hits.append((events[chosen], item))
    matching.false_alarms = [event for index, event in enumerate(events) if index not in used]
    return matching


@dataclass(frozen=True)
class OperatingPoint:
    """The spotter at one setting of its thresholds."""

    parameter: float
    """The sweep parameter (a logit, or a shift of logits)."""
    thresholds: dict[str, float] | float
    false_alarms: int
    hours: float
    misses: int
    keywords: int
    frr_per_keyword: dict[str, float]

    @property
    def fa_per_hour(self) -> float:
        return self.false_alarms / self.hours if self.hours > 0 else math.inf

    @property
    def frr(self) -> float:
        return self.misses / self.keywords if self.keywords else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "parameter": self.parameter,
            "thresholds": self.thresholds,
            "false_alarms": self.false_alarms,
            "hours": self.hours,
            "fa_per_hour": self.fa_per_hour,
            "misses": self.misses,
            "keywords": self.keywords,
            "frr": self.frr,
            "frr_per_keyword": self.frr_per_keyword,
        }


def operating_point(
    events: Iterable[Timed],
    truth: Sequence[Timed],
    hours: float,
    tolerance_s: float = 0.5,
    parameter: float = math.nan,
    thresholds: dict[str, float] | float = math.nan,
) -> OperatingPoint:
    """The operating point of one set of events over ``hours`` of audio holding ``truth``."""
    matching = match_events(events, truth, tolerance_s)
    return OperatingPoint(
        parameter, thresholds, len(matching.false_alarms), hours, len(matching.misses), matching.truths,
        matching.frr_per_keyword(),
    )  # fmt: skip


def logit(p: float) -> float:
    p = min(max(float(p), 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def global_thresholds(parameter: float) -> float:
    """One threshold for every keyword: ``sigmoid(parameter)``."""
    return sigmoid(parameter)


def shifted_thresholds(base: Mapping[str, float]) -> Callable[[float], dict[str, float]]:
    """Per-class thresholds moved together: ``sigmoid(logit(base[c]) + parameter)`` (0: ``base``)."""
    logits = {label: logit(value) for label, value in base.items()}
    return lambda parameter: {label: sigmoid(value + parameter) for label, value in logits.items()}


def sweep(
    detect: Callable[[dict[str, float] | float], Iterable[Timed]],
    truth: Sequence[Timed],
    hours: float,
    thresholds_at: Callable[[float], dict[str, float] | float] = global_thresholds,
    grid: Sequence[float] = SWEEP_GRID,
    rates: Sequence[float] = FA_RATES,
    tolerance_s: float = 0.5,
    refine_steps: int = 8,
) -> tuple[list[OperatingPoint], dict[float, OperatingPoint | None]]:
    """Operating points of ``detect(thresholds)`` over the parameters of ``grid`` (``thresholds_at``
    turns one into thresholds), sorted by parameter, and for each rate of ``rates`` the point with
    the lowest false rejection rate among those at or below that many false alarms per hour (None
    when none is). Between the last grid point above a rate and the first at or below it,
    ``refine_steps`` bisections find the crossing more finely."""
    points: dict[float, OperatingPoint] = {}

    def at(parameter: float) -> OperatingPoint:
        parameter = float(parameter)
        if parameter not in points:
            thresholds = thresholds_at(parameter)
            points[parameter] = operating_point(detect(thresholds), truth, hours, tolerance_s, parameter, thresholds)
        return points[parameter]

    ordered = [at(p) for p in sorted(grid)]
    for rate in rates:
        first = next((i for i, p in enumerate(ordered) if p.fa_per_hour <= rate), None)
        if not first:  # none at or below the rate, or already the lowest threshold of the grid
            continue
        low, high = ordered[first - 1].parameter, ordered[first].parameter
        for _ in range(refine_steps):
            middle = (low + high) / 2
            if at(middle).fa_per_hour <= rate:
                high = middle
            else:
                low = middle
    ordered = sorted(points.values(), key=lambda p: p.parameter)
    return ordered, {rate: best_at(ordered, rate) for rate in rates}


def best_at(points: Iterable[OperatingPoint], rate: float) -> OperatingPoint | None:
    """The point with the lowest false rejection rate at or below ``rate`` false alarms per hour
    (fewest false alarms, then the lowest parameter, among equals); None when there is none."""
    allowed = [p for p in points if p.fa_per_hour <= rate]
    return min(allowed, key=lambda p: (p.frr, p.fa_per_hour, p.parameter)) if allowed else None


def keyword_sweeps(
    detect: Callable[[dict[str, float]], Iterable[Timed]],
    truth: Sequence[Timed],
    hours: float,
    keywords: Sequence[str],
    grid: Sequence[float] = SWEEP_GRID,
    rates: Sequence[float] = FA_RATES,
    tolerance_s: float = 0.5,
) -> dict[str, tuple[list[OperatingPoint], dict[float, OperatingPoint | None]]]:
    """Each keyword's own DET curve: its threshold alone swept (``detect({keyword: threshold})``
    reports that keyword only), its false rejections against its own false alarms per hour."""
    curves = {}
    for keyword in keywords:
        own = [t for t in truth if t.label == keyword]
        alone = functools.partial(_alone, keyword)
        curves[keyword] = sweep(detect, own, hours, alone, grid, rates, tolerance_s)
    return curves


def _alone(keyword: str, parameter: float) -> dict[str, float]:
    return {keyword: sigmoid(parameter)}


def det_curve_png(
    points: Sequence[OperatingPoint],
    rates: Sequence[float] = FA_RATES,
    marked: OperatingPoint | None = None,
    title: str = "",
    keywords: Mapping[str, Sequence[OperatingPoint]] | None = None,
) -> bytes:
    """PNG of the DET curve: false rejection rate (%) against false alarms per hour (symmetric log
    axis, so zero false alarms shows), the requested rates as dashed lines, ``marked`` (the stored
    thresholds) as a star, and each keyword's own curve (``keywords``) as a thin line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.2, 5.0))
    colours = plt.get_cmap("tab20")
    for position, (keyword, curve) in enumerate(sorted((keywords or {}).items())):
        ordered = sorted(curve, key=lambda p: p.parameter)
        axes.plot([p.fa_per_hour for p in ordered], [100 * p.frr for p in ordered], linewidth=0.8, alpha=0.7,
                  color=colours(position % 20), label=f"{keyword} (own false alarms)")  # fmt: skip
    ordered = sorted(points, key=lambda p: p.parameter)
    axes.plot([p.fa_per_hour for p in ordered], [100 * p.frr for p in ordered], marker=".", color="black",
              linewidth=2, label="all keywords (every false alarm)")  # fmt: skip
    for rate in rates:
        axes.axvline(rate, color="0.6", linestyle="--", linewidth=0.8)
    if marked is not None:
        axes.plot([marked.fa_per_hour], [100 * marked.frr], marker="*", markersize=14, color="tab:red",
                  linestyle="none", label="stored thresholds")  # fmt: skip
    axes.set_xscale("symlog", linthresh=0.1)
    axes.set_xlabel("false alarms per hour")
    axes.set_ylabel("false rejection rate (%)")
    axes.set_ylim(-2, 102)
    axes.grid(True, which="both", linewidth=0.3)
    axes.legend(loc="upper right", fontsize=6 if keywords else 8, ncol=2 if keywords and len(keywords) > 8 else 1)
    axes.set_title(title or "DET curve")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
