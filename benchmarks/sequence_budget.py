"""A small sequence set, the default fit against a 100-epoch run (the training budget's check).

    python benchmarks/sequence_budget.py [--workdir lightning_logs/benchmarks/sequence_budget] [--seed 0]

The set imitates the UCI Japanese Vowels data (nine speakers saying one vowel, 12 cepstral
coefficients per frame, 7-29 frames, 270 training and 370 test sequences in the original): nine
classes, each a smooth seeded trajectory through 12 dimensions, every sequence a randomly
time-warped, shifted and noisy reading of its class's trajectory. Both runs use
``--data SequenceDataModule`` with its defaults; the second trains exactly 100 epochs
(``--trainer.max_epochs 100 --early_stopping.patience 1000``).
Prints the test accuracy of the kept checkpoint and of the last epoch for each, and the epochs run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from common import command_line

from speechrnn.data.corpora.sequences import save_npz

CLASSES, DIM = 9, 12
SPLIT_SIZES = {"train": 270, "val": 27, "test": 370}


def trajectory(rng: np.random.Generator) -> np.ndarray:
    """A smooth ``(64, DIM)`` path: a few random cosines per dimension."""
    t = np.linspace(0, 1, 64)[:, None]
    frequencies = rng.uniform(0.5, 2.5, (3, DIM))
    phases = rng.uniform(0, 2 * np.pi, (3, DIM))
    amplitudes = rng.normal(0, 1, (3, DIM))
    return sum(amplitudes[k] * np.cos(2 * np.pi * frequencies[k] * t + phases[k]) for k in range(3))


def write_set(path: Path, seed: int = 0) -> Path:
    """The seeded set as ``.npz`` (features, lengths, labels, splits)."""
    rng = np.random.default_rng(seed)
    paths = [trajectory(rng) for _ in range(CLASSES)]
    sequences, labels, splits = [], [], []
    for split, count in SPLIT_SIZES.items():
        for i in range(count):
            label = i % CLASSES
            length = int(rng.integers(7, 30))
            warp = np.sort(rng.uniform(0, 1, length)) ** rng.uniform(0.7, 1.4)
            frames = np.array([np.interp(warp * 63, np.arange(64), paths[label][:, d]) for d in range(DIM)]).T
            frames += rng.normal(0, 0.6, DIM) + rng.normal(0, 0.9, frames.shape)
            sequences.append(frames.astype(np.float32))
            labels.append(label)
            splits.append(split)
    return save_npz(path, sequences, labels=labels, splits=splits)


def last_epoch_accuracy(run: Path) -> float:
    """Test accuracy of the run's last epoch (``last.ckpt``), whichever checkpoint the run kept."""
    from speechrnn.evaluate import main as evaluate

    metrics = evaluate(
        ["--ckpt", str(run / "checkpoints" / "last.ckpt"), "--split", "test", "--out", str(run / "last")]
    )
    return float(metrics["accuracy"])


def main(workdir: Path = Path("lightning_logs/benchmarks/sequence_budget"), seed: int = 0) -> list[dict]:
    """Write the set, fit with the defaults and with 100 epochs, print the table; returns its rows.

    Args:
        workdir: Where the set and both runs go.
        seed: Seed of the set.
    """
    from speechrnn.fit import main as fit
    from speechrnn.stages import latest_run

    data = write_set(Path(workdir) / "sequences.npz", seed)
    rows = []
    hundred = ["--trainer.max_epochs", "100", "--early_stopping.patience", "1000"]  # all 100, no early stop
    for name, extra in (("default", []), ("100 epochs", hundred)):
        root = Path(workdir) / name.replace(" ", "_")
        fit(["--data", "SequenceDataModule", "--data.path", str(data), "--trainer.default_root_dir", str(root),
             "--trainer.enable_progress_bar", "false", *extra])  # fmt: skip
        run = latest_run(root)
        saved = json.loads((run / "test_metrics.json").read_text())
        rows.append({
            "run": name, "epochs": saved["timing"]["epochs"], "kept": saved["metrics"]["test/acc"],
            "last epoch": last_epoch_accuracy(run),
        })  # fmt: skip
    print("| run | epochs | kept checkpoint | last epoch |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['run']} | {row['epochs']} | {100 * row['kept']:.1f} % | {100 * row['last epoch']:.1f} % |")
    return rows


if __name__ == "__main__":
    command_line(main, __doc__)
