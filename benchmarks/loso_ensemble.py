"""FSDD leave-one-speaker-out: is the gap to the goal variance between training runs, or bias?

Reads finished ``pipelines/run_fsdd.py`` work folders (``--runs``: the same recipe with other seeds,
or small changes), and for each held-out voice averages the posteriors of that fold's model from
every run (each model normalises the voice with its own statistics over all of the voice's
recordings, as the pipeline's test does). Prints each run's accuracy and each ensemble's: if
averaging several runs lifts a fold far beyond its best single run, the fold is limited by
run-to-run variance; if not, by what every run learns alike.

    SPEECHRNN_DATA=../shared/data python benchmarks/loso_ensemble.py --runs '[W0, W1, W2]'
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import command_line

from speechrnn.audio_io import read_audio
from speechrnn.data.corpora.fsdd import FILE_PATTERN
from speechrnn.data.corpora.locations import corpus_root
from speechrnn.errors import MissingInputError, reported_errors
from speechrnn.inference import EnrolledWaveformClassifier, WaveformClassifier


@dataclass(frozen=True)
class EnsembleRun:
    """Finished leave-one-speaker-out runs whose fold models are averaged."""

    runs: list[Path]
    """``pipelines/run_fsdd.py --workdir`` folders with finished ``fit-loso-<speaker>`` stages."""
    speakers: list[str] | None = None
    """Held-out voices to score; default: every voice with a finished fold in the first run."""
    sizes: list[int] = field(default_factory=lambda: [3, 5])
    """Ensemble sizes: every combination of that many runs is scored (sizes above the number of runs are skipped)."""
    recordings: Path | None = None
    """FSDD's ``recordings`` folder; default: ``$SPEECHRNN_DATA/fsdd/recordings``."""


def fold_checkpoint(run: Path, speaker: str) -> Path:
    """The checkpoint the pipeline tested for ``speaker``'s fold (its ``.done.json``)."""
    done = run / f"fit-loso-{speaker}.done.json"
    if not done.is_file():
        raise MissingInputError(f"{done}: no finished leave-one-speaker-out fit for {speaker} in {run}")
    return Path(json.loads(done.read_text())["result"]["checkpoint"])


def finished_folds(run: Path) -> list[str]:
    """The held-out voices of ``run``'s finished folds."""
    return sorted(
        done.name.removeprefix("fit-loso-").removesuffix(".done.json") for done in run.glob("fit-loso-*.done.json")
    )


def voice_posteriors(
    checkpoint: Path, files: list[Path], read: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, list[str]]:
    """Class probabilities ``(N, C)`` for ``files`` (one voice), normalised with the voice's own
    statistics over all of them, and the model's class names. ``read``: the voice's padded audio and
    lengths by (sample rate, shortest clip), filled on first use, so each run does not read it again."""
    model = EnrolledWaveformClassifier(WaveformClassifier.from_checkpoint(checkpoint))
    key = (model.sample_rate, model.settings.win_length)
    if key not in read:
        waves = [torch.as_tensor(read_audio(f, *key)) for f in files]
        read[key] = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([len(w) for w in waves])
    audio, lengths = read[key]
    with torch.inference_mode():
        return model(audio, lengths, audio, lengths), model.inner.class_names


def main(settings: EnsembleRun) -> dict[str, dict[str, float]]:
    recordings = settings.recordings or corpus_root("fsdd", "recordings")
    speakers = settings.speakers or finished_folds(settings.runs[0])
    if not speakers:
        raise MissingInputError(f"{settings.runs[0]}: no finished leave-one-speaker-out fits (fit-loso-*.done.json)")
    results: dict[str, dict[str, float]] = {}
    for speaker in speakers:
        files = sorted(recordings.glob(f"[0-9]_{speaker}_*.wav"))
        if not files:
            raise MissingInputError(f"{recordings}: no recordings of {speaker}")
        digits = [FILE_PATTERN.match(f.name)["digit"] for f in files]
        posteriors, read = {}, {}
        for run in settings.runs:
            probabilities, names = voice_posteriors(fold_checkpoint(run, speaker), files, read)
            posteriors[str(run)] = probabilities
        labels = torch.tensor([names.index(digit) for digit in digits])
        scores = {run: (p.argmax(-1) == labels).float().mean().item() for run, p in posteriors.items()}
        for size in settings.sizes:
            for members in itertools.combinations(posteriors, size):
                mean = torch.stack([posteriors[m] for m in members]).mean(0)
                scores[" + ".join(members)] = (mean.argmax(-1) == labels).float().mean().item()
        results[speaker] = scores
        for name, accuracy in scores.items():
            print(f"{speaker:10s} {100 * accuracy:5.1f} %  {name}", flush=True)
    print("mean over the voices:")
    for name in results[speakers[0]]:
        values = [results[s][name] for s in speakers]
        print(f"  {100 * sum(values) / len(values):5.1f} % (worst {100 * min(values):.1f} %)  {name}")
    return results


if __name__ == "__main__":
    with reported_errors():
        main(command_line(EnsembleRun, __doc__))
