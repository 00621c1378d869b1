"""The project's seed systems, each trained with the package, each printing its final metric.

    python pipelines/run_seeds.py [--quick true] [--workdir lightning_logs/pipelines/seeds]

1. Many-to-one regression: a window of a noisy sine -> its next value (``task=regression``).
2. Per-step time-series prediction: a dense layer on every step of a unidirectional RNN predicts the
   next value at each step (``frame_regression``), trained on chunks with truncated BPTT.
3. A stacked (2-layer) LSTM classifying which of three frequencies a noisy sinusoid has.
4. The character model: a vanilla tanh RNN reads one character at a time and predicts the next
   (``CharTextDataModule``); bits per character on the held-out end of the text.

Each baseline beside it is what a model without memory of the sequence would score. Finished
systems are skipped on a rerun (``speechrnn.stages.Pipeline``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from recipes import command_line

from speechrnn.data.corpora.sequences import save_npz
from speechrnn.data.corpora.text import generated_text
from speechrnn.stages import Pipeline

COMMON = ("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")


def unigram_bits(text: str) -> float:
    """Entropy of the text's character frequencies, in bits: a model without context pays this."""
    counts = np.unique(list(text), return_counts=True)[1] / len(text)
    return float(-(counts * np.log2(counts)).sum())


def noisy_sine(length: int, rng: np.random.Generator, frequency: float | None = None) -> np.ndarray:
    """``length + 1`` samples of a sine (random phase; ``frequency`` in cycles per sample, else random) in noise."""
    frequency = rng.uniform(0.05, 0.15) if frequency is None else frequency
    t = np.arange(length + 1)
    return np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi)) + 0.05 * rng.standard_normal(length + 1)


def write_datasets(folder: Path, count: int, seed: int = 0) -> dict[str, Path]:
    """The three array datasets (npz), generated with ``seed``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    series = [noisy_sine(30, rng).astype(np.float32) for _ in range(count)]
    windows = [s[:-1, None] for s in series]
    paths = {"window": save_npz(folder / "sine_windows.npz", windows, labels=[float(s[-1]) for s in series])}
    long = [noisy_sine(120, rng).astype(np.float32) for _ in range(count // 2)]
    paths["steps"] = save_npz(folder / "sine_steps.npz", [s[:-1, None] for s in long], targets=[s[1:] for s in long])
    frequencies = (0.04, 0.08, 0.12)
    classes = rng.integers(0, 3, count)
    waves = [noisy_sine(int(rng.integers(40, 80)), rng, frequencies[c])[:-1, None].astype(np.float32) for c in classes]
    paths["freq"] = save_npz(folder / "frequencies.npz", waves, labels=classes)
    return paths


def main(
    quick: bool = False, workdir: Path = Path("lightning_logs/pipelines/seeds"), epochs: int | None = None
) -> None:
    """Generate the datasets, train each system, and write the report.

    Args:
        quick: Tiny datasets and two epochs each, to check the chain in seconds.
        workdir: Where the datasets, runs and report go.
        epochs: Epochs per system (default: 2 with quick, else 20).
    """
    pipeline = Pipeline(workdir)
    epochs = epochs or (2 if quick else 20)
    paths = write_datasets(Path(workdir) / "data", count=120 if quick else 1200)
    budget = ("--trainer.max_epochs", str(epochs), *COMMON)
    sequence = ("--data", "SequenceDataModule", "--data.batch_size", "32")
    window = pipeline.fit("sine_regression", None, [*sequence, "--data.path", str(paths["window"]),
                          "--data.task", "regression", "--model.cell", "rnn", "--model.bidirectional", "false",
                          "--model.pooling", "last", *budget])  # fmt: skip
    steps = pipeline.fit("series_per_step", None, [*sequence, "--data.path", str(paths["steps"]),
                         "--data.task", "frame_regression", "--model.cell", "rnn", "--model.bidirectional", "false",
                         "--model.tbptt_steps", "40", *budget])  # fmt: skip
    lstm = pipeline.fit("stacked_lstm", None, [*sequence, "--data.path", str(paths["freq"]), "--model.cell", "lstm",
                        "--model.num_layers", "2", "--model.bidirectional", "false", "--model.pooling", "mean",
                        *budget])  # fmt: skip
    chars = pipeline.fit("char_rnn", None, ["--data", "CharTextDataModule", "--model.cell", "rnn",
                         "--model.bidirectional", "false", "--model.num_layers", "1", "--model.dropout", "0",
                         "--model.tbptt_steps", "32", *budget])  # fmt: skip
    rows = [
        ["noisy sine window -> next value (vanilla RNN)", "test MSE", window["metrics"]["test/mse"], 0.5],
        ["noisy sine, next value at every step (RNN, TBPTT 40)", "test MSE", steps["metrics"]["test/mse"], 0.5],
        ["frequency of a noisy sinusoid (2-layer LSTM)", "test accuracy", lstm["metrics"]["test/acc"], 1 / 3],
        [
            "next character (vanilla RNN, TBPTT 32)",
            "bits per char",
            chars["metrics"]["test/loss"] / math.log(2),
            unigram_bits(generated_text()),
        ],
    ]
    pipeline.write_table(
        "report", ["system", "metric", "value", "memoryless baseline"], rows,
        "Seed systems (baselines: a sine's variance; chance among three frequencies; the text's unigram entropy)",
    )  # fmt: skip


if __name__ == "__main__":
    command_line(main, __doc__)
