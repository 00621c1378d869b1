"""Posterior smoothing chosen on validation streams, then read on the test streams (issue 29).

Reads the stream tracks that ``speechrnn evaluate --streams`` saved for the validation split
(``--split val``) and the test split of one run, and for each smoothing length gives every keyword
the threshold calibration would (:func:`speechrnn.spotting.calibration.choose_thresholds`, on the
validation tracks), then prints the false rejections and false alarms per hour that those
thresholds give on both splits. Pick on the validation column; the test column is what the choice
would have given. Tracks are scored once; only the smoothing and thresholds change.

    speechrnn evaluate --split val --streams --streams.negative_hours 10 --ckpt RUN/checkpoints/calibrated.ckpt
    speechrnn evaluate --streams --streams.negative_hours 10 --ckpt RUN/checkpoints/calibrated.ckpt
    python benchmarks/kws_smoothing.py --run RUN
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
from common import command_line

from speechrnn.spotting.calibration import Detector, SpottingSettings, choose_thresholds
from speechrnn.spotting.metrics import operating_point
from speechrnn.spotting.streams import Truth
from speechrnn.spotting.track import PosteriorTrack


def read_streams(report: Path) -> tuple[dict[str, PosteriorTrack], list[Truth], float, float]:
    """The tracks, truth, hours and hop that ``evaluate --streams`` wrote into ``report``."""
    result = json.loads((report / "report.json").read_text())
    streams = result["streams"]
    archive = np.load(report / "stream_tracks.npz", allow_pickle=False)
    names = sorted({key.rsplit(".", 1)[0] for key in archive.keys() if key.endswith(".times")})
    hop = float(streams["detection"]["hop_s"])
    tracks = {
        name: PosteriorTrack(
            archive[f"{name}.times"],
            archive[f"{name}.probabilities"],
            result["class_names"],
            float(streams["track_window_s"]),
            hop,
        )  # fmt: skip
        for name in names
    }
    with open(report / "stream_truth.csv", newline="") as table:
        truth = [Truth(r["file"], float(r["start"]), float(r["end"]), r["label"]) for r in csv.DictReader(table)]
    return tracks, truth, float(streams["hours"]), hop


@dataclasses.dataclass(frozen=True)
class SmoothingRun:
    """Smoothing lengths read on one run's saved validation and test stream tracks."""

    run: Path
    """Run folder holding ``report_val/`` and ``report_test/`` with their ``stream_tracks.npz``."""
    smoothing: tuple[float, ...] = (0.0, 0.2, 0.3, 0.5, 0.7, 0.9)
    """Smoothing lengths tried (seconds)."""
    target_fa_per_hour: float = 0.5
    """False alarms per hour that the validation thresholds aim at."""


def main(run: SmoothingRun) -> list[dict]:
    val, test = read_streams(run.run / "report_val"), read_streams(run.run / "report_test")
    target = run.target_fa_per_hour
    print(f"validation {val[2]:.2f} h, test {test[2]:.2f} h; thresholds for {target} FA/h on validation")
    print("smoothing s | val FRR % | val FA/h | test FRR % | test FA/h (count)")
    rows = []
    for smoothing in run.smoothing:
        settings = SpottingSettings(target_fa_per_hour=target, smoothing_s=smoothing, hop_s=val[3])
        on_val = Detector(val[0], settings)
        thresholds, _ = choose_thresholds(on_val, val[1], val[2], settings)
        at_val = operating_point(on_val(thresholds), val[1], val[2], settings.tolerance_s)
        at_test = operating_point(Detector(test[0], settings)(thresholds), test[1], test[2], settings.tolerance_s)
        rows.append({"smoothing_s": smoothing, "val": at_val.to_dict(), "test": at_test.to_dict()})
        print(
            f"{smoothing:11.1f} | {100 * at_val.frr:9.1f} | {at_val.fa_per_hour:8.2f} | {100 * at_test.frr:10.1f} | "
            f"{at_test.fa_per_hour:.2f} ({at_test.false_alarms})",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main(command_line(SmoothingRun, __doc__))
