"""Per-speaker against per-utterance cepstral mean and variance normalisation on FSDD
leave-one-speaker-out: the lead for issue 14 (accuracy on voices never heard).

Per-utterance CMVN (speechrnn's default) takes each clip's own mean and variance per coefficient,
which on a 0.3-0.8 s digit also removes part of what was said. Per-speaker CMVN (Kaldi's usual
choice) takes them over all of a speaker's clips: the held-out speaker's statistics come from its
own unlabelled recordings (transductive, as speaker adaptation is), no labels involved.

For each held-out speaker: 13 MFCC + deltas + delta-deltas of every clip (``FSDDDataModule``'s cache,
``normalize="none"``), normalised both ways, written with ``save_npz`` (its groups and splits: the
held-out speaker is the test split, a seeded 10 % of the others' recordings validation), then the
same BiGRU 2 x 128 fit on each (``SequenceDataModule``, 30 epochs, last epoch, dropout 0.2, label
smoothing 0.1, no augmentation), one process after the other.

    SPEECHRNN_DATA=../shared/data python benchmarks/speaker_normalisation.py [--speakers '[jackson, nicolas]']
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np
from common import command_line, load_line, machine_lines

from speechrnn.data import FSDDDataModule
from speechrnn.data.corpora.sequences import save_npz
from speechrnn.features import FeatureSettings

SPEAKERS = ("george", "jackson", "nicolas", "theo", "yweweler")


def write_both(held_out: str, folder: Path, cache_dir: Path) -> dict[str, Path]:
    """The corpus normalised per utterance and per speaker, as two ``.npz`` files."""
    dm = FSDDDataModule(
        split="speaker",
        test_speakers=[held_out],
        cache_dir=cache_dir,
        features=FeatureSettings(n_mfcc=13, deltas=2, normalize="none"),
    )
    dm.setup("fit")
    sequences, labels, speakers, splits = [], [], [], []
    for split, indices in dm.splits.items():
        for index in indices:
            record = dm.record_of(int(index))
            sequences.append(np.asarray(dm.store[int(index)], np.float64))
            labels.append(record.label)
            speakers.append(record.speaker)
            splits.append(split)
    statistics_of = {}
    for speaker in set(speakers):
        frames = np.concatenate([s for s, who in zip(sequences, speakers, strict=True) if who == speaker])
        statistics_of[speaker] = (frames.mean(0), frames.std(0) + 1e-5)
    per_utterance = [((s - s.mean(0)) / (s.std(0) + 1e-5)).astype(np.float32) for s in sequences]
    per_speaker = [
        ((s - statistics_of[who][0]) / statistics_of[who][1]).astype(np.float32)
        for s, who in zip(sequences, speakers, strict=True)
    ]
    return {
        name: save_npz(folder / f"{held_out}_{name}.npz", data, labels, groups=speakers, splits=splits)
        for name, data in (("utterance", per_utterance), ("speaker", per_speaker))
    }


def fit_accuracy(npz: Path, root: Path, epochs: int) -> float:
    """Test accuracy of the BiGRU fitted ``epochs`` epochs on ``npz`` (runs under ``root``)."""
    from speechrnn.fit import main as fit

    metrics = fit([
        "--data", "SequenceDataModule", "--data.path", str(npz),
        "--model.cell", "gru", "--model.hidden_size", "128", "--model.num_layers", "2",
        "--model.bidirectional", "true", "--model.dropout", "0.2", "--model.label_smoothing", "0.1",
        "--trainer.max_epochs", str(epochs), "--checkpoint.monitor", "null", "--early_stopping.patience", "1000",
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    return metrics["test/acc"]


def main(speakers: tuple[str, ...] = SPEAKERS, epochs: int = 30) -> None:
    """Fit both normalisations for every held-out speaker, one after the other; print the table.

    Args:
        speakers: Held-out speakers, one fold each.
        epochs: Epochs of every fit.
    """
    print("\n".join(machine_lines()))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-speaker-cmvn-") as work:
        work = Path(work)
        for held_out in speakers:
            files = write_both(held_out, work, work / "cache")
            accuracy = {
                name: fit_accuracy(path, work / f"runs_{held_out}_{name}", epochs) for name, path in files.items()
            }
            rows.append((held_out, accuracy["utterance"], accuracy["speaker"]))
            print(f"{held_out}: per utterance {accuracy['utterance']:.3f}, per speaker {accuracy['speaker']:.3f}; "
                  f"{load_line('now')}", flush=True)  # fmt: skip
    print()
    print("| held-out speaker | per-utterance CMVN | per-speaker CMVN |")
    print("|---|---:|---:|")
    for speaker, utterance, speaker_cmvn in rows:
        print(f"| {speaker} | {100 * utterance:.1f} % | {100 * speaker_cmvn:.1f} % |")
    for label, column in (("mean", statistics.mean), ("worst", min)):
        print(f"| {label} | {100 * column(r[1] for r in rows):.1f} % | {100 * column(r[2] for r in rows):.1f} % |")
    print(load_line("at end"))


if __name__ == "__main__":
    command_line(main, __doc__)
