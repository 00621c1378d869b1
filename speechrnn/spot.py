"""``speechrnn spot --ckpt CKPT FILE_OR_DIR ...``: find keywords in recordings of any length.

Every ``--hop_s`` the model classifies the last ``--window_s`` of audio (the training clip length;
``--mode``: windows scored as clips, or one recurrent pass for unidirectional models), the class
posteriors are smoothed over ``--smoothing_s``, and each run above a class's threshold is one event
(runs closer than ``--refractory_s`` merge): ``file, start, end, label, score`` (seconds, peak smoothed
posterior), ``_unknown_`` and ``_silence_`` never reported. Files are read block by block, so an
hour takes no more memory than a minute; any rate and channel count.

Thresholds: the checkpoint's calibration (``data_config["spotting"]``) when it has one, else 0.5 for
every class (with a warning); ``--threshold X`` sets every class's, ``--thresholds '{yes: 0.7}'``
some classes' on top. A model normalised per speaker takes each file's own statistics, or a training
voice's with ``--speaker NAME``.

    speechrnn spot --ckpt last.ckpt meeting.wav
    speechrnn spot --ckpt last.ckpt recordings/ --format csv --out events.csv --threshold 0.8

Events go to standard output (or ``--out``, written when every file is done); the real-time factor
of each file and of the whole run go to standard error. A file that cannot be used is one line naming
it, the others continue, and the exit status is 1.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import jsonargparse
import torch
import yaml

from speechrnn.audio_io import AudioError, audio_files
from speechrnn.cli import command_parser, parse_command, resolve_device
from speechrnn.errors import ConfigError, run_entry_point
from speechrnn.io import atomic_write_text
from speechrnn.models.classifier import RNNClassifier, is_classification
from speechrnn.normalization import normalization_of
from speechrnn.spotting.events import Event, detect_events
from speechrnn.spotting.scoring import Mode, resolve_mode, score_file
from speechrnn.spotting.settings import (
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW_S,
    DETECTION_DEFAULTS,
    IGNORED_CLASSES,
    check_class_thresholds,
    check_threshold,
    stored_spotting,
    training_window_seconds,
)

Format = Literal["table", "csv", "jsonl"]
FIELDS = ("file", "start", "end", "label", "score")


def format_events(events: Sequence[Event], format: Format, header: bool = True) -> str:
    """``events`` as text: ``table`` (tab-separated, aligned numbers), ``csv`` or ``jsonl`` (one object
    a line); times in seconds to the millisecond, scores to four decimals. ``header``: the column
    names first (table and csv)."""
    values = [(e.file, round(e.start, 3), round(e.end, 3), e.label, round(e.score, 4)) for e in events]
    if format == "jsonl":
        return "".join(json.dumps(dict(zip(FIELDS, row, strict=True))) + "\n" for row in values)
    rows = [(file, f"{start:.3f}", f"{end:.3f}", label, f"{score:.4f}") for file, start, end, label, score in values]
    if format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([FIELDS] * header + rows)
        return buffer.getvalue()
    lines = ["file\tstart_s\tend_s\tlabel\tscore"] * header
    lines += [f"{file}\t{start:>9}\t{end:>9}\t{label}\t{score}" for file, start, end, label, score in rows]
    return "".join(line + "\n" for line in lines)


def class_thresholds(
    model: RNNClassifier,
    threshold: float | None,
    thresholds: dict[str, float] | None,
    calibrated: dict[str, float],
) -> dict[str, float]:
    """Each reportable class's threshold: ``thresholds``' over ``threshold`` over the calibrated one
    (:data:`~speechrnn.spotting.settings.DEFAULT_THRESHOLD` for a class without one)."""
    names = list(model.class_names)
    base = check_threshold(threshold) if threshold is not None else None
    given = check_class_thresholds(thresholds or {}, names)
    return {
        label: given.get(label, base if base is not None else calibrated.get(label, DEFAULT_THRESHOLD))
        for label in names
        if label not in IGNORED_CLASSES
    }


def audio_classifier(ckpt: str | Path, device: str, purpose: str) -> RNNClassifier:
    """The model of ``ckpt`` in eval mode on ``device``, which must classify audio clips (a
    :class:`ConfigError` naming the file and saying what it holds otherwise, for ``purpose``)."""
    model = RNNClassifier.from_checkpoint(ckpt, map_location=device).eval()
    features = model.data_config.get("features")
    if not is_classification(model.hparams.task) or not features:
        trained_on = "audio" if features else "feature sequences"
        raise ConfigError(
            f"{ckpt}: {purpose} needs a classifier of audio; this is a {model.hparams.task} model of {trained_on}"
        )
    return model


def spot(
    ckpt: Path,
    inputs: list[Path],
    format: Format = "table",
    out: Path | None = None,
    hop_s: float | None = None,
    window_s: float | None = None,
    smoothing_s: float | None = None,
    refractory_s: float | None = None,
    threshold: float | None = None,
    thresholds: dict[str, float] | None = None,
    temperature: float | None = None,
    mode: Mode | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    speaker: str | None = None,
) -> int:
    """Find keywords in audio files of any length and write the events.

    Args:
        ckpt: Checkpoint written by ``speechrnn fit`` (a classifier of audio).
        inputs: Audio files or folders of audio files.
        format: ``table`` (tab-separated), ``csv`` or ``jsonl`` (one JSON object per event).
        out: Write the events to this file (atomically, when every file is done) instead of standard output.
        hop_s: Seconds between scored windows (default: the calibration's, else 0.1).
        window_s: Seconds of audio each score reads; default: the calibration's, else the training
            clip length the checkpoint records, else 1 s.
        smoothing_s: Posteriors are averaged over this many seconds (centred) before thresholds
            (default: the calibration's, else 0.3).
        refractory_s: Runs above threshold of one class closer than this are one event (default:
            the calibration's, else 1).
        threshold: Threshold for every class (default: the checkpoint's calibrated ones, else 0.5).
        thresholds: Per-class thresholds, e.g. ``{yes: 0.7, no: 0.6}``, over the others.
        temperature: Softmax temperature (default: the checkpoint's calibrated one, else 1).
        mode: ``window`` (every window scored as a clip: exact to training, any model), ``stream``
            (one recurrent pass, unidirectional models) or ``auto`` (the one exact to training);
            default: the calibration's, else ``auto``.
        batch_size: Windows scored at once.
        device: Torch device to run on (``auto``: cuda when available).
        speaker: For a model normalised per speaker: a speaker of its training corpus whose stored
            statistics normalise every file. Without it each file is normalised with its own statistics.

    Returns:
        The process exit status: 0 when every file was scored, 1 otherwise.
    """
    for name, value in (("hop_s", hop_s), ("window_s", window_s), ("batch_size", batch_size)):
        if value is not None and not value > 0:
            raise ConfigError(f"--{name} must be > 0, got {value}")
    for name, value in (("smoothing_s", smoothing_s), ("refractory_s", refractory_s)):
        if value is not None and not value >= 0:
            raise ConfigError(f"--{name} must be >= 0, got {value}")
    if temperature is not None and not temperature > 0:
        raise ConfigError(f"--temperature must be > 0, got {temperature}")
    device = resolve_device(device)
    model = audio_classifier(ckpt, device, "spotting")
    config = model.data_config
    calibration = stored_spotting(config, str(ckpt), warn=False)
    given = {"hop_s": hop_s, "window_s": window_s, "smoothing_s": smoothing_s, "refractory_s": refractory_s}
    detection = detection_settings({**given, "mode": mode}, calibration.detection, str(ckpt))
    hop_s, window_s, smoothing_s, refractory_s = (detection[key] for key in given)
    try:
        chosen = resolve_mode(model, detection["mode"])
    except ValueError as error:
        raise ConfigError(f"--mode {detection['mode']}: {error}") from None
    per_class = class_thresholds(model, threshold, thresholds, calibration.thresholds)
    statistics = None
    if normalization_of(config) == "speaker":
        if speaker is not None:
            known = config.get("speaker_statistics") or {}
            if speaker not in known:
                raise ConfigError(f"--speaker {speaker}: no statistics for it in {ckpt}; known: {', '.join(known)}")
            statistics = (torch.tensor(known[speaker]["mean"]), torch.tensor(known[speaker]["std"]))
        else:
            note(
                f"{ckpt} normalises per speaker: each file with its own statistics (--speaker NAME: a training voice's)"
            )
    elif speaker is not None:
        raise ConfigError(f"--speaker {speaker}: {ckpt} does not normalise per speaker; leave --speaker out")
    if not calibration.calibrated and threshold is None and set(per_class) - set(thresholds or {}):
        note(
            f"{ckpt} is not calibrated for spotting: threshold 0.5 on smoothed posteriors where none is given",
            "warning",
        )
    per_step_stream = chosen == "stream" and model.net.per_step
    if window_s is None and training_window_seconds(config) is None and not per_step_stream:
        note(f"{ckpt} records no training clip length: windows of {DEFAULT_WINDOW_S:g} s (--window_s sets it)")

    failures, found, audio_seconds, busy = 0, [], 0.0, 0.0
    for item in inputs:
        try:
            paths = audio_files(item)
        except AudioError as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
            continue
        for path in paths:
            started = time.perf_counter()
            try:
                track = score_file(
                    model, path, hop_s=hop_s, window_s=window_s, mode=chosen, batch_size=batch_size,
                    temperature=temperature or calibration.temperature, speaker=statistics, device=device,
                )  # fmt: skip
            except AudioError as error:
                failures += 1
                print(f"error: {error}", file=sys.stderr)
                continue
            events = detect_events(track, per_class, smoothing_s=smoothing_s, refractory_s=refractory_s, file=str(path))
            elapsed = time.perf_counter() - started
            audio_seconds, busy = audio_seconds + track.duration, busy + elapsed
            print(
                f"{path}: {track.duration:.1f} s of audio in {elapsed:.1f} s, real-time factor "
                f"{elapsed / max(track.duration, 1e-9):.4f} ({track.mode} mode), {len(events)} events",
                file=sys.stderr,
            )
            if out is None:
                sys.stdout.write(format_events(events, format, header=format != "jsonl" and not found))
                sys.stdout.flush()
            found.append(events)
    events = [event for batch in found for event in batch]
    if out is not None:
        atomic_write_text(out, format_events(events, format, header=format != "jsonl"))
    print(
        f"spot: {len(found)} file(s), {audio_seconds:.1f} s of audio in {busy:.1f} s, real-time factor "
        f"{busy / max(audio_seconds, 1e-9):.4f}, {len(events)} events" + (f", {failures} failed" if failures else ""),
        file=sys.stderr,
    )
    return 1 if failures else 0


def detection_settings(given: dict[str, Any], calibrated: dict[str, Any], ckpt: str) -> dict[str, Any]:
    """Each detection setting: as given, else as calibrated, else the default (the window: None, for
    the scorer to take from the checkpoint). A given value that differs from the calibrated one gets
    a warning: the thresholds were chosen at the calibrated one."""
    settings = {}
    for key, value in given.items():
        if value is not None and key in calibrated and value != calibrated[key]:
            note(f"--{key} {value}: {ckpt}'s thresholds were calibrated with {calibrated[key]}", "warning")
        settings[key] = value if value is not None else calibrated.get(key, DETECTION_DEFAULTS.get(key))
    return settings


def note(message: str, kind: str = "note") -> None:
    print(f"{kind}: {message}", file=sys.stderr)


class LabelYamlLoader(yaml.SafeLoader):
    """YAML whose booleans are only ``true`` and ``false`` (YAML 1.2), so that keyword labels such as
    ``yes``, ``no``, ``on`` and ``off`` stay labels in ``--thresholds '{yes: 0.7, off: 0.6}'``; ``1e-3``
    is a number, as in jsonargparse's own loader."""

    yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


LabelYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
LabelYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)
LABEL_YAML = "yaml_labels"
jsonargparse.set_loader(LABEL_YAML, lambda text: yaml.load(text, Loader=LabelYamlLoader), (yaml.YAMLError,))


def main(args: list[str] | None = None) -> int:
    parser = command_parser("spot", __doc__)
    parser.parser_mode = LABEL_YAML
    parser.add_argument("inputs", type=Path, nargs="+", metavar="FILE_OR_DIR", help="audio files or folders")
    parser.add_function_arguments(spot, skip={"inputs"}, as_positional=False)
    config = parse_command(parser, args)
    options = {k: v for k, v in vars(config.clone()).items() if k not in ("config", "__default_config__")}
    return spot(**options)


if __name__ == "__main__":
    run_entry_point(main)
