"""``python -m speechrnn.evaluate --ckpt PATH``: the evaluation report of a checkpoint on a split.

The data comes from the run's saved ``config.yaml`` (beside ``checkpoints/``), so the split is the
one the model was trained with; any ``--data.*`` option overrides it, and ``--data CLASS`` points
the checkpoint at other data with the same labels.

``--streams`` (or any ``--streams.*`` option) also evaluates keyword spotting in continuous audio:
test streams built from the split (its keywords at ``--streams.snr_db`` over its own background,
with non-keyword words between them, and ``--streams.negative_hours`` of negative audio), scored
with the checkpoint's calibration (temperature and per-keyword thresholds, ``data_config
["spotting"]``). A checkpoint without one is calibrated first on the validation split, for
``--streams.target_fa_per_hour``, and written as ``calibrated.ckpt`` beside it. The report gains
false rejection rates at 0.5, 1 and 2 false alarms per hour, false alarms per hour on the negative
audio, and the DET curve (``det_curve.png``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jsonargparse import ArgumentParser

from speechrnn.cli import command_parser, option_errors, parse_with_run_data, resolve_device
from speechrnn.data.base import SequenceDataModuleBase
from speechrnn.errors import ConfigError, run_entry_point
from speechrnn.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from speechrnn.models.classifier import RNNClassifier
from speechrnn.report_page import write_report_page
from speechrnn.reports import report_split
from speechrnn.spotting.calibration import (
    Detector,
    SpottingSettings,
    calibrate,
    score_streams,
    stream_rate,
    write_calibrated,
)
from speechrnn.spotting.metrics import (
    FA_RATES,
    det_curve_png,
    global_thresholds,
    keyword_sweeps,
    match_events,
    operating_point,
    shifted_thresholds,
    sweep,
)
from speechrnn.spotting.settings import stored_spotting
from speechrnn.spotting.streams import NON_KEYWORDS, StreamSet, StreamSettings

DETECTION_KEYS = ("hop_s", "window_s", "smoothing_s", "refractory_s", "tolerance_s", "mode")


@dataclasses.dataclass(frozen=True)
class StreamEvaluation(SpottingSettings, StreamSettings):
    """Keyword spotting on test streams: how they are built, scored, calibrated and matched."""

    recalibrate: bool = False
    """Calibrate again even when the checkpoint holds a calibration."""
    sweep: Literal["shift", "global"] = "shift"
    """How false rejections at each false-alarm rate are found: the stored per-keyword thresholds
    moved together in logit space (shift), or one threshold for every keyword (global)."""

    def __post_init__(self) -> None:
        StreamSettings.__post_init__(self)
        SpottingSettings.__post_init__(self)

    def part(self, kind: type) -> Any:
        """The :class:`StreamSettings` or :class:`SpottingSettings` among these options."""
        return kind(**{field.name: getattr(self, field.name) for field in dataclasses.fields(kind)})


def build_parser(command: str = "evaluate", description: str | None = __doc__) -> ArgumentParser:
    """The options of a command that reads a checkpoint and a split of its run's data."""
    parser = command_parser(command, description)
    parser.add_argument("--ckpt", type=Path, required=True, help="Checkpoint to evaluate.")
    parser.add_argument(
        "--split", type=str, default="test", choices=["train", "val", "test"], help="Split to evaluate."
    )
    parser.add_argument("--out", type=Path | None, default=None, help="Report folder (default: <run>/report_<split>).")
    parser.add_argument("--device", type=str, default="auto", help="Torch device (auto: cuda when available).")
    parser.add_subclass_arguments(SequenceDataModuleBase, "data", required=False, help="Data (default: the run's).")
    return parser


def evaluate_parser() -> ArgumentParser:
    """``evaluate``'s options: :func:`build_parser`'s and ``--streams``."""
    parser = build_parser()
    parser.add_argument(
        "--streams",
        type=StreamEvaluation | None,
        default=None,
        help="Evaluate keyword spotting on test streams built from the split: --streams alone for the defaults, "
        "or any --streams.* option (--streams.help lists them).",
    )
    return parser


def streams_flag(args: list[str]) -> list[str]:
    """``--streams`` given alone (or ``--streams true``) as ``--streams={}``: the default settings,
    which any ``--streams.*`` option then changes; ``--streams false`` as ``--streams=null``."""
    result, position = [], 0
    while position < len(args):
        word = args[position]
        following = args[position + 1] if position + 1 < len(args) else None
        if word == "--streams" and (following is None or following.startswith("--")):
            result.append("--streams={}")
        elif word == "--streams" and following.lower() in ("true", "false", "yes", "no"):
            result.append("--streams={}" if following.lower() in ("true", "yes") else "--streams=null")
            position += 1
        elif word.lower() in ("--streams=true", "--streams=false"):
            result.append("--streams={}" if word.lower().endswith("true") else "--streams=null")
        else:
            result.append(word)
        position += 1
    return result


def main(args: list[str] | None = None) -> dict[str, Any]:
    parser = evaluate_parser()
    args = streams_flag(sys.argv[1:] if args is None else [str(a) for a in args])
    config = parse_with_run_data(parser, args)
    with option_errors(args):
        datamodule = parser.instantiate_classes(config).data
        options = StreamEvaluation(**vars(config.streams)) if config.streams is not None else None
    model = RNNClassifier.from_checkpoint(config.ckpt, map_location="cpu")
    out = config.out or config.ckpt.resolve().parent.parent / f"report_{config.split}"
    device = resolve_device(config.device)
    metrics = report_split(model, datamodule, config.split, out, device, extra={"checkpoint": str(config.ckpt)})
    print(f"{config.split}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}; report in {out}")
    if options is not None:
        metrics["streams"] = evaluate_streams(model, datamodule, config.ckpt, config.split, out, options, device)
    return metrics


def evaluate_streams(
    model: RNNClassifier,
    datamodule: SequenceDataModuleBase,
    checkpoint: Path,
    split: str,
    out: Path,
    options: StreamEvaluation,
    device: str = "cpu",
) -> dict[str, Any]:
    """Keyword spotting on streams built from ``split``, written into the report folder ``out`` beside
    the clip report (its ``report.json`` gains ``streams``, its ``report.md`` a section); returns the
    ``streams`` entry. Calibrates on the validation split first when the model holds no calibration
    (or ``options.recalibrate``), writing ``calibrated.ckpt`` beside ``checkpoint``."""
    if model.hparams.task != "classification" or not model.data_config.get("features"):
        raise ConfigError("--streams needs an audio classifier of whole clips (a keyword spotter)")
    settings = options.part(SpottingSettings)
    stream_settings = options.part(StreamSettings)
    calibrated_as = None
    if not model.data_config.get("spotting") or options.recalibrate:
        if split == "val":
            print("calibrating on the val split, which is also the split the streams are built from")
        spotting = calibrate(model, datamodule, settings, stream_settings, "val", device, log=print)
        calibrated_as = write_calibrated(checkpoint, spotting)
        model.data_config = {**model.data_config, "spotting": spotting}
        print(f"calibrated: temperature {spotting['temperature']:.3f}; thresholds in {calibrated_as}")
    stored = model.data_config["spotting"]
    calibration = stored_spotting(model.data_config, str(checkpoint))
    calibrated_with = ("hop_s", "window_s", "smoothing_s", "refractory_s", "mode")
    settings = dataclasses.replace(settings, **{key: stored[key] for key in calibrated_with if key in stored})
    keywords = [name for name in model.class_names if name not in NON_KEYWORDS]
    thresholds = {keyword: calibration.threshold(keyword) for keyword in keywords}
    streams = StreamSet.from_datamodule(datamodule, split, model.class_names, stream_rate(model), stream_settings)
    tracks = score_streams(model, streams, settings, calibration.temperature, device, log=print)
    result, analysis = analyse_streams(streams, tracks, thresholds, settings, options.sweep)
    result = {
        "split": split,
        "calibrated_checkpoint": str(calibrated_as) if calibrated_as else None,
        "temperature": calibration.temperature,
        "target_fa_per_hour": calibration.target_fa_per_hour,
        **result,
    }
    title = f"{type(datamodule).__name__} {split} streams, {stream_settings.snr_db:g} dB SNR"
    curves = {keyword: points for keyword, (points, _) in analysis["keywords"].items()}
    png = det_curve_png(analysis["points"], FA_RATES, analysis["stored"], title, curves)
    atomic_write_bytes(out / "det_curve.png", png)
    atomic_write_text(out / "stream_events.csv", _events_table(analysis["events"], streams.truth, settings.tolerance_s))
    atomic_write_text(out / "stream_truth.csv", _truth_table(streams.truth))
    atomic_write_bytes(out / "stream_tracks.npz", _tracks_archive(tracks))
    _add_to_report(out, result)
    at_stored, at_one = result["stored_thresholds"], result["at_fa_per_hour"]["1.0"]
    alarms = "n/a" if result["negative_fa_per_hour"] is None else f"{result['negative_fa_per_hour']:.2f}"
    print(
        f"streams: FRR {100 * at_stored['frr']:.1f} % at {at_stored['fa_per_hour']:.2f} FA/h with the stored "
        f"thresholds ({alarms} FA/h on {result['negative_hours']:.2f} h of negative audio); FRR at 1 FA/h: "
        f"{_percent(at_one and at_one['frr'])}; DET curve in {out / 'det_curve.png'}"
    )
    return result


def analyse_streams(
    streams: StreamSet,
    tracks: dict[str, Any],
    thresholds: dict[str, float],
    settings: SpottingSettings,
    sweep_kind: str = "shift",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stream figures of scored ``tracks`` (by stream name): the operating point at
    ``thresholds``, false alarms on the negative audio and what lies under each false alarm, the
    sweep of all keywords together (``shift`` or ``global``) and each keyword's own sweep, with false
    rejections at :data:`FA_RATES`. Returns the report's numbers and, for the files, the events at
    ``thresholds``, the sweep's points, the stored point and each keyword's sweep."""
    detect = Detector(tracks, settings)
    truth, hours = streams.truth, streams.seconds() / 3600
    keywords = sorted(thresholds)
    events = detect(thresholds)
    at_stored = operating_point(events, truth, hours, settings.tolerance_s, 0.0, thresholds)
    negative = {stream.name for stream in streams.negative_streams}
    negative_hours = streams.seconds("negative") / 3600
    negative_alarms = sum(event.file in negative for event in events)
    family = shifted_thresholds(thresholds) if sweep_kind == "shift" else global_thresholds
    points, at_rates = sweep(detect, truth, hours, family, rates=FA_RATES, tolerance_s=settings.tolerance_s)
    own = keyword_sweeps(detect, truth, hours, keywords, rates=FA_RATES, tolerance_s=settings.tolerance_s)
    per_keyword = {}
    for keyword, (_, best) in own.items():
        placed = sum(t.label == keyword for t in truth)
        per_keyword[keyword] = {"placed": placed, **{str(rate): point and point.frr for rate, point in best.items()}}
    mean = {str(rate): _mean([entry[str(rate)] for entry in per_keyword.values()]) for rate in FA_RATES}
    result = {
        "streams": streams.describe(),
        "thresholds": thresholds,
        "detection": {key: getattr(settings, key) for key in DETECTION_KEYS},
        "track_window_s": float(next(iter(tracks.values())).window_s),
        "hours": hours,
        "negative_hours": negative_hours,
        "stored_thresholds": at_stored.to_dict(),
        "negative_false_alarms": int(negative_alarms),
        "negative_fa_per_hour": negative_alarms / negative_hours if negative_hours else None,
        "false_alarm_sources": false_alarm_sources(streams, match_events(events, truth, settings.tolerance_s)),
        "sweep": sweep_kind,
        "at_fa_per_hour": {str(rate): point.to_dict() if point else None for rate, point in at_rates.items()},
        "per_keyword_at_own_fa_per_hour": per_keyword,
        "mean_frr_at_own_fa_per_hour": mean,
        "det_curve": [{"fa_per_hour": p.fa_per_hour, "frr": p.frr, "parameter": p.parameter} for p in points],
    }
    return result, {"events": events, "points": points, "stored": at_stored, "keywords": own}


def _mean(values: list[float | None]) -> float | None:
    """The mean, or None when any value is None (a keyword that never reaches the rate)."""
    return None if any(v is None for v in values) or not values else sum(values) / len(values)


def false_alarm_sources(streams: StreamSet, matching: Any, most: int = 5) -> dict[str, Any]:
    """What lies under each false alarm: background alone, a non-keyword word or a keyword (another
    keyword's label, or a second event on one); the word clips behind most of them."""
    counts = {"background": 0, "non_keyword_word": 0, "keyword": 0}
    clips: dict[tuple[str, str, str], int] = {}
    for event in matching.false_alarms:
        under = streams.words_under(event.file, event.start, event.end)
        if not under:
            counts["background"] += 1
            continue
        counts["keyword" if any(c.label not in NON_KEYWORDS for c in under) else "non_keyword_word"] += 1
        for clip in {(c.path, c.label) for c in under}:
            clips[(*clip, event.label)] = clips.get((*clip, event.label), 0) + 1
    ranked = sorted(clips.items(), key=lambda item: (-item[1], item[0]))
    return {
        **counts,
        "distinct_clips": len({path for path, _, _ in clips}),
        "most": [{"clip": path, "label": label, "detected_as": detected, "false_alarms": n}
                 for (path, label, detected), n in ranked[:most]],
    }  # fmt: skip


def _events_table(events: list[Any], truth: list[Any], tolerance_s: float) -> str:
    hits = {id(event) for event, _ in match_events(events, truth, tolerance_s).hits}
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["file", "start", "end", "label", "score", "hit"])
    writer.writerows([e.file, f"{e.start:.3f}", f"{e.end:.3f}", e.label, f"{e.score:.6f}", int(id(e) in hits)]
                     for e in events)  # fmt: skip
    return table.getvalue()


def _tracks_archive(tracks: dict[str, Any]) -> bytes:
    """Every stream's posterior track (``<stream>.times``, ``<stream>.probabilities``, tempered as
    scored) and the class names, as ``.npz`` bytes: thresholds and smoothing can be studied again
    without scoring again."""
    arrays: dict[str, np.ndarray] = {}
    for name, track in tracks.items():
        arrays[f"{name}.times"], arrays[f"{name}.probabilities"] = track.times, track.probabilities
    arrays["class_names"] = np.array(next(iter(tracks.values())).class_names)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _truth_table(truth: list[Any]) -> str:
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["file", "start", "end", "label"])
    writer.writerows([t.file, f"{t.start:.3f}", f"{t.end:.3f}", t.label] for t in truth)
    return table.getvalue()


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _add_to_report(out: Path, result: dict[str, Any]) -> None:
    """The stream results into the clip report: ``report.json``'s ``streams``, a section of ``report.md``
    and of ``report.html`` (written again, with the DET curve)."""
    report = json.loads((out / "report.json").read_text())
    report["streams"] = result
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", (out / "report.md").read_text().rstrip("\n") + "\n\n" + stream_markdown(
        result, report.get("accuracy")))  # fmt: skip
    write_report_page(out)


def stream_markdown(result: dict[str, Any], clip_accuracy: float | None = None) -> str:
    """The report section of a stream evaluation (:func:`evaluate_streams`'s result)."""
    described, stored = result["streams"], result["stored_thresholds"]
    settings = described["settings"]
    rows = [("stored thresholds", stored)] + [
        (f"at most {rate} FA/h", point) for rate, point in result["at_fa_per_hour"].items()
    ]
    keywords = sorted(stored["frr_per_keyword"])
    calibrated = result["calibrated_checkpoint"]
    lines = [
        "## Keyword spotting in streams",
        "",
        f"Streams built from the {result['split']} split (seed {settings['seed']}): {described['keywords_placed']} "
        f"keywords in {described['keyword_streams']} stream(s) ({described['keyword_stream_seconds'] / 60:.1f} min), "
        f"each at {settings['snr_db']:g} dB SNR over the split's own background, with "
        f"{settings['unknown_per_gap']} non-keyword word(s) before each; negative audio: "
        f"{described['negative_seconds'] / 3600:.2f} h in {described['negative_streams']} stream(s) "
        f"({described['negative_unknown_words']} non-keyword words, no keyword). Unique audio under them: "
        f"{described['unique_keyword_clips']} keyword clips, {described['unique_unknown_clips']} non-keyword clips, "
        f"{described['unique_background_seconds']:.1f} s of background (looped at varied offsets and gain).",
        "",
        f"Calibration: temperature {result['temperature']:.3f}, per-keyword thresholds for "
        f"{result['target_fa_per_hour']} FA/h on validation streams"
        + (f" (written to `{calibrated}`)." if calibrated else " (stored in the checkpoint)."),
        f"Detection: {result['detection']['smoothing_s']:g} s smoothing, {result['detection']['refractory_s']:g} s "
        f"refractory, a hit within {result['detection']['tolerance_s']:g} s of the keyword; windows of "
        f"{result['track_window_s']:g} s every {result['detection']['hop_s']:g} s. False alarms per hour count "
        f"every false alarm over all {result['hours']:.2f} h of streams; operating points move the stored "
        f"thresholds {'together' if result['sweep'] == 'shift' else 'as one threshold'}.",
        "",
        "| operating point | FA/h | false alarms | FRR | " + " | ".join(keywords) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(keywords),
    ]
    for name, point in rows:
        if point is None:
            lines.append(f"| {name} | not reached | | |" + " |" * len(keywords))
            continue
        per = " | ".join(_percent(point["frr_per_keyword"].get(k)) for k in keywords)
        lines.append(
            f"| {name} | {point['fa_per_hour']:.2f} | {point['false_alarms']} | {_percent(point['frr'])} | {per} |"
        )
    negative, sources = result["negative_fa_per_hour"], result["false_alarm_sources"]
    most = "; ".join(
        f"`{'/'.join(Path(m['clip']).parts[-2:])}` ({m['label']}) as {m['detected_as']} x{m['false_alarms']}"
        for m in sources["most"]
    )
    lines += [
        "",
        f"False alarms on the negative audio alone with the stored thresholds: {result['negative_false_alarms']} in "
        f"{result['negative_hours']:.2f} h" + (f" ({negative:.2f} per hour)." if negative is not None else "."),
        f"Under the {stored['false_alarms']} false alarms at the stored thresholds: background alone "
        f"{sources['background']}, a non-keyword word {sources['non_keyword_word']}, a keyword (another label, or a "
        f"second event) {sources['keyword']}; {sources['distinct_clips']} distinct clips"
        + (f", most: {most}." if most else "."),
        "",
        "Each keyword alone (its own threshold swept, against its own false alarms per hour):",
        "",
        "| keyword | placed | " + " | ".join(f"FRR at <= {rate} FA/h" for rate in FA_RATES) + " |",
        "|---|---:|" + "---:|" * len(FA_RATES),
    ]
    own_rows = [(k, e["placed"], e) for k, e in result["per_keyword_at_own_fa_per_hour"].items()]
    for keyword, placed, entry in [*own_rows, ("mean", "", result["mean_frr_at_own_fa_per_hour"])]:
        lines.append(f"| {keyword} | {placed} | " + " | ".join(_percent(entry[str(r)]) for r in FA_RATES) + " |")
    if clip_accuracy is not None:
        lines += ["", f"Clip accuracy (above): {100 * clip_accuracy:.2f} %."]
    lines += ["", "DET curve: `det_curve.png`; events: `stream_events.csv`; truth: `stream_truth.csv`; posteriors:",
              "`stream_tracks.npz`.", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    run_entry_point(main)
