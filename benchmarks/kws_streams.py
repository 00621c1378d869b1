"""Keyword spotting in continuous audio (issue 29): a noise recording through ``speechrnn spot`` with
a checkpoint's calibrated thresholds, counting the events (the goal is none).

The stream figures themselves come from ``speechrnn evaluate --streams`` (calibration on the
validation split, test streams, false rejections at 0.5 / 1 / 2 false alarms per hour, the DET curve):

    # (a) the shared Speech Commands slice
    SPEECHRNN_DATA=/work/shared/data speechrnn fit --data SpeechCommandsDataModule --data.task 12class \\
        --trainer.default_root_dir /work/exp/kws_sc
    SPEECHRNN_DATA=/work/shared/data speechrnn evaluate --streams --streams.snr_db 10 \\
        --ckpt /work/exp/kws_sc/lightning_logs/version_0/checkpoints/last.ckpt
    # (b) the embedded corpus with its open set, over 10 hours of negative audio
    speechrnn fit --data SyntheticCommandsDataModule --data.open_set true --trainer.default_root_dir /work/exp/kws_synth
    speechrnn evaluate --streams --streams.negative_hours 10 --ckpt /work/exp/kws_synth/.../last.ckpt
    # (c) this script: 10 minutes of the test split's background (never used in calibration) and of
    #     pink noise, each written as a wav file and spotted with the calibrated thresholds
    python benchmarks/kws_streams.py --ckpt .../checkpoints/calibrated.ckpt --out /work/exp/kws_noise

The background recording is the test split's own background audio as the test streams lay it down
(segments at seeded offsets and gains, no words); pink noise is drawn fresh at the same level.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from common import command_line, machine_lines

from speechrnn.cli import parse_with_run_data
from speechrnn.evaluate import build_parser
from speechrnn.models.classifier import RNNClassifier
from speechrnn.spot import spot
from speechrnn.spotting.calibration import stream_rate
from speechrnn.spotting.streams import StreamSet, StreamSettings

Source = Literal["background", "pink"]


@dataclasses.dataclass(frozen=True)
class NoiseRun:
    """A noise recording through ``speechrnn spot``."""

    ckpt: Path
    """A calibrated checkpoint (``calibrated.ckpt``, written by ``speechrnn evaluate --streams``)."""
    out: Path
    """Folder for the recordings, the events and ``noise.json``."""
    minutes: float = 10.0
    """Length of each recording."""
    sources: tuple[Source, ...] = ("background", "pink")
    """Which recordings: the test split's background, fresh pink noise."""
    split: str = "test"
    """Split whose background is recorded."""
    background_dbfs: float = -35.0
    """RMS level of the recordings (the test streams' background level)."""
    seed: int = 0
    """Seed of the recordings."""


def pink_noise(samples: int, rate: int, dbfs: float, seed: int) -> np.ndarray:
    """Pink noise (power falling as 1/f above 20 Hz) at ``dbfs`` RMS."""
    rng = np.random.default_rng(seed)
    spectrum = rng.standard_normal(samples // 2 + 1) + 1j * rng.standard_normal(samples // 2 + 1)
    spectrum *= np.maximum(np.fft.rfftfreq(samples, 1 / rate), 20.0) ** -0.5
    noise = np.fft.irfft(spectrum, samples)
    return (noise * 10 ** (dbfs / 20) / np.sqrt(np.mean(noise**2))).astype(np.float32)


def write_recording(run: NoiseRun, source: Source, model: RNNClassifier, path: Path) -> float:
    """Write ``minutes`` of ``source`` to ``path``; returns the unique audio under it (seconds)."""
    rate = stream_rate(model)
    samples = round(run.minutes * 60 * rate)
    if source == "pink":
        sf.write(path, pink_noise(samples, rate, run.background_dbfs, run.seed), rate, subtype="FLOAT")
        return run.minutes * 60
    parser = build_parser()
    datamodule = parser.instantiate_classes(parse_with_run_data(parser, ["--ckpt", str(run.ckpt)])).data
    settings = StreamSettings(negative_hours=run.minutes / 60, negative_stream_minutes=run.minutes,
                              unknown_per_minute=0, background_dbfs=run.background_dbfs, seed=run.seed)  # fmt: skip
    streams = StreamSet.from_datamodule(datamodule, run.split, model.class_names, rate, settings)
    [stream] = streams.negative_streams
    with sf.SoundFile(path, "w", rate, 1, subtype="FLOAT") as handle:
        for block in streams.blocks(stream):
            handle.write(block)
    return streams.background_seconds


def main(run: NoiseRun) -> dict:
    run.out.mkdir(parents=True, exist_ok=True)
    model = RNNClassifier.from_checkpoint(run.ckpt)
    stored = model.data_config.get("spotting") or {}
    results = {"checkpoint": str(run.ckpt), "thresholds": stored.get("thresholds"), "machine": machine_lines()}
    for source in run.sources:
        recording = run.out / f"{source}_{run.minutes:g}min.wav"
        unique = write_recording(run, source, model, recording)
        events_file = run.out / f"{source}_events.csv"
        began = time.perf_counter()
        log = io.StringIO()
        options = {key: stored[key] for key in ("hop_s", "smoothing_s", "refractory_s") if key in stored}
        with contextlib.redirect_stderr(log):
            status = spot(run.ckpt, [recording], format="csv", out=events_file, **options)
        with open(events_file) as handle:
            events = list(csv.DictReader(handle))
        results[source] = {
            "recording": str(recording),
            "minutes": run.minutes,
            "unique_seconds": unique,
            "events": len(events),
            "labels": sorted({e["label"] for e in events}),
            "top_scores": sorted((float(e["score"]) for e in events), reverse=True)[:5],
            "seconds": time.perf_counter() - began,
            "status": status,
            "spot_log": log.getvalue().strip().splitlines()[-1:],
        }
        print(f"{source}: {run.minutes:g} min ({unique:.0f} s unique), {len(events)} events", file=sys.stderr)
    (run.out / "noise.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))
    return results


if __name__ == "__main__":
    main(command_line(NoiseRun, __doc__))
