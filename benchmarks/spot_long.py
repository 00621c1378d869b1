"""``speechrnn spot`` on an hour of audio: real-time factor and peak memory, and the same on six minutes
to show that memory does not grow with the length.

    python benchmarks/spot_long.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt --window_s 1.8
    python benchmarks/spot_long.py --hours 0.02 --short_minutes 0.5     # smoke test, an untrained model

Each file is written block by block (never whole in memory), deterministically from ``--seed``: noise
whose level drifts slowly (a few dB over minutes), and every ``--words_every_s`` seconds a word of the
synthetic-commands vocabulary said by one of its test speakers (``synthesize_word``) at ``--snr_db``
over the noise, whose times and labels are the truth. ``spot`` runs in a child process of its own
(``common.run_in_child``), so its peak resident memory (``ru_maxrss``) and its start are its own; the
memory after loading the model and before reading audio is reported beside the peak. The events are
matched to the words (same label, overlapping span) for a rough count of hits and false alarms; the
model needs no ``_unknown_`` class for that, but one trained without it labels some noise too.

Without ``--ckpt`` a default-size model (unidirectional GRU 2 x 128, 13 MFCC + deltas, utterance
normalisation) is built untrained in-process: timings only, its events mean nothing.
"""

from __future__ import annotations

import csv
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from common import command_line, load_line, machine_lines, run_in_child

RATE = 16000
BLOCK_S = 10.0


@dataclass
class Options:
    ckpt: str | None = None
    """Checkpoint to spot with; None: an untrained default-size model (timings only)."""
    hours: float = 1.0
    """Length of the long file."""
    short_minutes: float = 6.0
    """Length of the short file (the same audio's start)."""
    mode: Literal["auto", "window", "stream"] = "auto"
    """``speechrnn spot --mode``."""
    window_s: float | None = None
    """``speechrnn spot --window_s`` (synthetic-commands clips are 1.8 s; checkpoints do not record it)."""
    hop_s: float = 0.1
    words_every_s: float = 30.0
    """One word this often."""
    snr_db: float = 15.0
    """Each word's power over the noise's."""
    threads: int | None = None
    """torch threads in the child (None: torch's default)."""
    seed: int = 0
    workdir: str | None = None
    """Where the audio and events go (default: a temporary folder, removed at the end)."""


@dataclass
class Request:
    ckpt: str
    audio: str
    events: str
    mode: str
    window_s: float | None
    hop_s: float
    threads: int | None


def word_plan(seconds: float, every_s: float, seed: int) -> list[tuple[float, str, int]]:
    """``(start time, word, test speaker)`` of each word, one per ``every_s`` at a seeded offset."""
    from speechrnn.data.corpora.synthetic.generator import WORDS, SyntheticCorpusConfig, split_speakers

    config = SyntheticCorpusConfig()
    speakers = [int(name.removeprefix("spk")) for name in split_speakers(config)["test"]]
    rng = np.random.default_rng([seed, 1])
    words = sorted(WORDS)
    starts = np.arange(every_s / 2, seconds - 3.0, every_s) + rng.uniform(-every_s / 4, every_s / 4, 1)
    return [(float(t), words[rng.integers(len(words))], speakers[rng.integers(len(speakers))]) for t in starts]


def write_audio(path: Path, seconds: float, options: Options) -> list[tuple[float, float, str]]:
    """The benchmark's audio, written block by block; returns the truth ``(start, end, word)``."""
    from speechrnn.data.corpora.synthetic.generator import SyntheticCorpusConfig, speaker_profile, synthesize_word

    config = SyntheticCorpusConfig()
    words = []
    for index, (start, word, speaker) in enumerate(word_plan(seconds, options.words_every_s, options.seed)):
        voice = synthesize_word(word, speaker_profile(config, speaker), np.random.default_rng([options.seed, 2, index]))
        voice = voice / np.sqrt(np.mean(voice.astype(np.float64) ** 2)) * 0.02 * 10 ** (options.snr_db / 20)
        words.append((round(start * RATE), voice.astype(np.float32), word))
    total, block = round(seconds * RATE), round(BLOCK_S * RATE)
    with sf.SoundFile(path, "w", RATE, 1, "PCM_16") as handle:
        for first in range(0, total, block):
            length = min(block, total - first)
            t = (first + np.arange(length)) / RATE
            level = 0.02 * 10 ** (0.15 * np.sin(2 * np.pi * t / 600.0))  # +-3 dB over ten minutes
            samples = level * np.random.default_rng([options.seed, 3, first // block]).standard_normal(length)
            for start, voice, _ in words:
                low, high = max(start, first), min(start + len(voice), first + length)
                if low < high:
                    samples[low - first : high - first] += voice[low - start : high - start]
            handle.write(np.clip(samples, -1, 1).astype(np.float32))
    return [(start / RATE, (start + len(voice)) / RATE, word) for start, voice, word in words]


def untrained_checkpoint(path: Path) -> Path:
    """A default-size unidirectional GRU with audio settings, saved as a checkpoint spot can load."""
    import torch

    from speechrnn.data.corpora.synthetic.generator import WORDS
    from speechrnn.features import FeatureSettings
    from speechrnn.models.classifier import RNNClassifier

    settings = FeatureSettings(sample_rate=RATE, normalize="utterance")
    names = sorted(WORDS)
    model = RNNClassifier(settings.feature_dim, len(names), class_names=names, bidirectional=False)
    model.data_config = {"class_names": names, "features": settings.to_dict()}
    state = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    torch.save({**state, "data_config": model.data_config, "pytorch-lightning_version": "2.5.0"}, path)
    return path


def run_spot(request: Request) -> dict:
    """In the child: load the model (the memory baseline), then ``speechrnn spot`` over the file."""
    import torch

    if request.threads:
        torch.set_num_threads(request.threads)
    from speechrnn.models.classifier import RNNClassifier
    from speechrnn.spot import main

    RNNClassifier.from_checkpoint(request.ckpt)  # imports and a model in memory, as spot holds them
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args = ["--ckpt", request.ckpt, request.audio, "--format", "csv", "--out", request.events]
    args += ["--mode", request.mode, "--hop_s", str(request.hop_s)]
    args += ["--window_s", str(request.window_s)] if request.window_s else []
    started = time.perf_counter()
    status = main(args)
    elapsed = time.perf_counter() - started
    return {
        "status": status,
        "seconds": elapsed,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def score(events_csv: Path, truth: list[tuple[float, float, str]]) -> tuple[int, int, int]:
    """``(events, words found, events on no word of their label)``: same label and overlapping spans."""
    with open(events_csv, newline="") as handle:
        events = [(float(row["start"]), float(row["end"]), row["label"]) for row in csv.DictReader(handle)]
    overlaps = [[s <= end and e >= start and label == word for start, end, word in truth] for s, e, label in events]
    found = sum(any(column) for column in zip(*overlaps, strict=True)) if events else 0
    return len(events), found, sum(not any(row) for row in overlaps)


def main(options: Options) -> None:
    print("\n".join(machine_lines()))
    folder = Path(options.workdir or tempfile.mkdtemp(prefix="bench-spot-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        ckpt = options.ckpt or str(untrained_checkpoint(folder / "untrained.ckpt"))
        print(f"checkpoint: {ckpt}{'' if options.ckpt else ' (untrained: timings only)'}; options: {options}")
        for name, seconds in (("short", options.short_minutes * 60), ("long", options.hours * 3600)):
            audio = folder / f"{name}.wav"
            started = time.perf_counter()
            truth = write_audio(audio, seconds, options)
            print(
                f"\n{name}: {seconds / 60:.1f} min written in {time.perf_counter() - started:.1f} s, {len(truth)} words"
            )
            request = Request(ckpt, str(audio), str(folder / f"{name}.csv"), options.mode, options.window_s,
                              options.hop_s, options.threads)  # fmt: skip
            result = run_in_child(run_spot, request)
            events, found, false_alarms = score(Path(request.events), truth)
            print(
                f"{name}: spot took {result['seconds']:.1f} s for {seconds:.0f} s of audio: real-time factor "
                f"{result['seconds'] / seconds:.4f} ({result['threads']} torch threads); peak RSS "
                f"{result['peak_rss_mib']:.0f} MiB ({result['baseline_rss_mib']:.0f} MiB with the model loaded, "
                f"before any audio); {events} events, {found}/{len(truth)} words found, {false_alarms} events "
                f"on no word of their label (exit status {result['status']})"
            )
        print(load_line("at end"))
    finally:
        if options.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main(command_line(Options, __doc__))
