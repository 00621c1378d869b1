"""``python -m speechrnn.predict --ckpt PATH FILE_OR_DIR ...``: classify audio files with a checkpoint.

Each file is read at any sample rate, mono or stereo, and featurised exactly as in training (the
settings come from the checkpoint). A file that cannot be used gets a one-line error naming it
and the rest continue; the exit status is 1 when any file failed.

A file far longer than the training clips (over :data:`LONG_CLIP_RATIO` times their length) gets one
label for all of it: a one-line warning names it and points to ``speechrnn spot``, which finds
keywords in long recordings.

A model trained with ``--data.features.normalize speaker`` normalises each voice with statistics of
that voice's own recordings: every FILE_OR_DIR argument is taken as one speaker (a folder of one
speaker's recordings works best), or ``--speaker NAME`` uses a training-corpus voice's statistics.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import soundfile as sf

from speechrnn.audio_io import SAMPLE_RATE_RANGE, AudioError, audio_files
from speechrnn.cli import command_parser, parse_command
from speechrnn.errors import ConfigError, run_entry_point
from speechrnn.inference import Predictor
from speechrnn.io import read_checkpoint
from speechrnn.spotting.settings import DEFAULT_WINDOW_S, training_window_seconds

LONG_CLIP_RATIO = 5.0
"""A file this many times longer than the training clips is far longer: predict warns and points to spot."""


def long_clip_warning(
    path: str | os.PathLike, training_clip: Callable[[], float | None], ckpt: str | os.PathLike = "CKPT"
) -> str | None:
    """The warning for ``path`` when it lasts over :data:`LONG_CLIP_RATIO` times the training clips
    (``training_clip()``: the length the checkpoint records, else None for 1 s), read from its
    header; None otherwise, or when the header cannot be read (reading the file reports that)."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError):  # reading the file reports its error
        return None
    if not SAMPLE_RATE_RANGE[0] <= info.samplerate <= SAMPLE_RATE_RANGE[1]:  # refused when read
        return None
    seconds = info.duration
    recorded = training_clip()
    clip = recorded or DEFAULT_WINDOW_S
    if seconds <= LONG_CLIP_RATIO * clip:
        return None
    known = "" if recorded else ", assumed: the checkpoint does not record it"
    return (
        f"warning: {path}: {seconds:.1f} s long, far longer than the training clips ({clip:g} s{known}); one label "
        f"for the whole file says little: speechrnn spot --ckpt {ckpt} {path} finds the keywords in it and when"
    )


def predict(
    ckpt: Path,
    inputs: list[Path],
    top_k: int = 3,
    format: Literal["table", "jsonl"] = "table",
    device: str = "cpu",
    speaker: str | None = None,
) -> int:
    """Classify audio files and print the ``top_k`` labels of each.

    Args:
        ckpt: Checkpoint written by ``python -m speechrnn.fit``.
        inputs: Audio files or folders of audio files.
        top_k: Labels printed per file, most likely first.
        format: ``table`` (aligned text) or ``jsonl`` (one JSON object per file).
        device: Torch device to run on.
        speaker: For a model normalised per speaker: a speaker of its training corpus whose stored
            statistics normalise every input. Without it each input argument is one speaker,
            normalised with statistics of its own files.

    Returns:
        The process exit status: 0 when every file was classified, 1 otherwise.
    """
    predictor = Predictor.from_checkpoint(ckpt, device)
    training_clip = functools.cache(lambda: training_window_seconds(read_checkpoint(ckpt).get("data_config") or {}))
    if speaker is not None and predictor.normalization != "speaker":
        raise ConfigError(f"--speaker {speaker}: {ckpt} does not normalise per speaker; leave --speaker out")
    try:
        known = predictor.known_speaker(speaker) if speaker is not None else None
    except KeyError as error:
        raise ConfigError(f"--speaker: {error.args[0]}") from None
    failures = 0
    for item in inputs:
        try:
            paths = audio_files(Path(item))
        except AudioError as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
            continue
        statistics = known
        if predictor.normalization == "speaker" and statistics is None:
            statistics, used = predictor.speaker_statistics(paths, skip_errors=True)  # bad files: reported below
            if used == 1:
                print(
                    f"warning: {item}: speaker statistics from one recording; a folder of the speaker's "
                    "recordings gives better ones",
                    file=sys.stderr,
                )
        for path in paths:
            if (warning := long_clip_warning(path, training_clip, ckpt)) is not None:
                print(warning, file=sys.stderr)
            try:
                ranked = list(predictor.predict_file(path, statistics).items())[: max(1, top_k)]
            except AudioError as error:
                failures += 1
                print(f"error: {error}", file=sys.stderr)
                continue
            if format == "jsonl":
                print(json.dumps({"path": str(path), "top": [{"label": k, "probability": v} for k, v in ranked]}))
            else:
                print(f"{path}\t" + "\t".join(f"{label} {probability:.4f}" for label, probability in ranked))
    return 1 if failures else 0


def main(args: list[str] | None = None) -> int:
    parser = command_parser("predict", __doc__)
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by python -m speechrnn.fit")
    parser.add_argument("inputs", type=Path, nargs="+", metavar="FILE_OR_DIR", help="audio files or folders")
    parser.add_argument("--top_k", "--top-k", type=int, default=3, help="labels printed per file, most likely first")
    parser.add_argument("--format", type=Literal["table", "jsonl"], default="table", help="output format")
    parser.add_argument("--device", type=str, default="cpu", help="torch device to run on")
    parser.add_argument(
        "--speaker",
        type=str | None,
        default=None,
        help="for a model normalised per speaker: use this training-corpus speaker's statistics "
        "(default: each FILE_OR_DIR is one speaker, normalised with its own files)",
    )
    config = parse_command(parser, args)
    return predict(config.ckpt, config.inputs, config.top_k, config.format, config.device, config.speaker)


if __name__ == "__main__":
    run_entry_point(main)
