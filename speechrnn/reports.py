"""Evaluation reports: scikit-learn metrics, calibration, confusions, per-speaker accuracy, files.

:func:`write_report` writes, atomically, into one folder: ``report.md`` (readable summary),
``report.json`` (every number), ``classification_report.txt`` (per-class precision, recall, F1,
support), ``confusion_matrix.csv`` and ``.png`` (row-normalised), ``reliability_diagram.png``,
``predictions.csv`` (each clip's labels, its top probabilities and speaker) and ``report.html``
(all of it on one page, with every misclassified clip to listen to: :mod:`speechrnn.report_page`).
Per-step tasks (voice activity, a character model) are scored over every valid frame, with
``predictions.csv`` giving each sequence's frame accuracy and ``bits_per_step`` the cross-entropy
in bits (bits per character for a character model).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    log_loss,
)

from speechrnn.data.base import SequenceDataModuleBase
from speechrnn.data.open_set import SILENCE
from speechrnn.data.splits import Split
from speechrnn.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from speechrnn.models.classifier import RNNClassifier
from speechrnn.split_predictions import predict_split

CALIBRATION_BINS = 15
"""Equal-width confidence bins of the expected calibration error and the reliability diagram."""
TOP_K = 3
"""Classes listed with their probabilities for each clip in ``predictions.csv``."""


def _renormalized(probabilities: np.ndarray) -> np.ndarray:
    """Rows clipped away from 0 and summing to 1 in float64 (a float32 softmax is off by ~1e-7,
    which scikit-learn's log_loss warns about)."""
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


def speaker_group(speaker: str) -> str:
    """The speaker a clip counts under in per-speaker accuracy: ``_silence_`` clips carry one
    "speaker" each (``_silence_/<clip>``, so that per-speaker normalisation normalises each alone),
    and are counted together as ``_silence_``."""
    return SILENCE if speaker.startswith(f"{SILENCE}/") else speaker


def reliability_bins(
    confidences: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> list[dict[str, Any]]:
    """Top-label calibration in ``bins`` equal-width confidence bins (a confidence of exactly 1 in
    the last): each bin's bounds, example count, accuracy and mean confidence (None when empty).
    The expected calibration error and the reliability diagram are both drawn from these."""
    confidences = np.asarray(confidences, dtype=np.float64)
    index = np.clip(np.searchsorted(np.linspace(0, 1, bins + 1), confidences, side="right") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    hits = np.bincount(index, weights=np.asarray(correct, dtype=np.float64), minlength=bins)
    sums = np.bincount(index, weights=confidences, minlength=bins)
    return [
        {
            "lower": i / bins,
            "upper": (i + 1) / bins,
            "count": int(counts[i]),
            "accuracy": float(hits[i] / counts[i]) if counts[i] else None,
            "confidence": float(sums[i] / counts[i]) if counts[i] else None,
        }
        for i in range(bins)
    ]


def calibration_error(reliability: list[dict[str, Any]]) -> float:
    """Expected calibration error (L1) of :func:`reliability_bins`: the count-weighted mean gap
    between each bin's accuracy and its mean confidence."""
    total = sum(b["count"] for b in reliability)
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in reliability if b["count"]) / total)


def compute_metrics(
    targets: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    speakers: Sequence[str | None] | None = None,
    top_confusions: int = 10,
) -> dict[str, Any]:
    """All report numbers for ``targets (N,)`` class indices and ``probabilities (N, C)``."""
    labels = np.arange(len(class_names))
    predictions = probabilities.argmax(1)
    reliability = reliability_bins(probabilities.max(1), predictions == targets)
    matrix = confusion_matrix(targets, predictions, labels=labels)
    off_diagonal = [(int(matrix[i, j]), i, j) for i in labels for j in labels if i != j and matrix[i, j] > 0]
    confusions = [
        {"true": class_names[i], "predicted": class_names[j], "count": count, "rate": count / max(1, matrix[i].sum())}
        for count, i, j in sorted(off_diagonal, key=lambda item: (-item[0], item[1], item[2]))[:top_confusions]
    ]
    metrics: dict[str, Any] = {
        "examples": int(len(targets)),
        "accuracy": float(accuracy_score(targets, predictions)),
        "balanced_accuracy": float(balanced_accuracy_score(targets, predictions)),
        "macro_f1": float(f1_score(targets, predictions, labels=labels, average="macro", zero_division=0)),
        "cohen_kappa": float(cohen_kappa_score(targets, predictions, labels=labels)),
        "log_loss": float(log_loss(targets, _renormalized(probabilities), labels=labels)),
        "expected_calibration_error": calibration_error(reliability),
        "reliability": reliability,
        "top_confusions": confusions,
        "per_class": classification_report(
            targets, predictions, labels=labels, target_names=list(class_names), output_dict=True, zero_division=0
        ),
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
    }
    if speakers is not None and all(s is not None for s in speakers):
        groups = np.asarray([speaker_group(str(s)) for s in speakers])
        names = sorted(set(groups.tolist()))
        metrics["per_speaker_accuracy"] = {
            s: float(np.mean(predictions[groups == s] == targets[groups == s])) for s in names
        }
        metrics["per_speaker_examples"] = {s: int(np.sum(groups == s)) for s in names}
    return metrics


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> bytes:
    """PNG of the row-normalised confusion matrix; sized and labelled to stay readable with 35+ classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    size = max(5.0, 0.32 * n + 2.5)
    figure, axes = plt.subplots(figsize=(size + 1.2, size))
    image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(n), labels=class_names, rotation=90 if n > 12 else 45, ha="center" if n > 12 else "right")
    axes.set_yticks(range(n), labels=class_names)
    font = 9 if n <= 15 else 7 if n <= 40 else 5
    axes.tick_params(labelsize=font)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    colour = "white" if normalised[i, j] > 0.5 else "black"
                    axes.text(
                        j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=font - 1, color=colour
                    )
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title(title or "confusion matrix (rows normalised to 1)")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def plot_reliability(reliability: list[dict[str, Any]], title: str = "") -> bytes:
    """PNG of the reliability diagram of :func:`reliability_bins`: each bin's accuracy against its
    confidence range (the diagonal is perfect calibration), and how many examples fall in each bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    filled = [b for b in reliability if b["count"]]
    width = reliability[0]["upper"] - reliability[0]["lower"]
    figure, (axes, counts) = plt.subplots(2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lowers = [b["lower"] for b in filled]
    axes.bar(lowers, [b["accuracy"] for b in filled], width=width, align="edge", color="tab:blue",
             edgecolor="white", label="accuracy")  # fmt: skip
    axes.bar(lowers, [b["confidence"] - b["accuracy"] for b in filled], bottom=[b["accuracy"] for b in filled],
             width=width, align="edge", color="tab:red", alpha=0.3, label="gap to mean confidence")  # fmt: skip
    axes.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=0.8, label="perfect calibration")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_ylabel("accuracy")
    axes.legend(loc="upper left", fontsize=8)
    axes.set_title(title or "reliability diagram")
    counts.bar(lowers, [b["count"] for b in filled], width=width, align="edge", color="0.5", edgecolor="white")
    counts.set_yscale("log")
    counts.set_xlabel("confidence (top-class probability)")
    counts.set_ylabel("examples")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def plot_voice_activity(
    waveform: np.ndarray,
    sample_rate: int,
    truth: np.ndarray,
    speech_probability: np.ndarray,
    hop_seconds: float,
    title: str = "",
) -> bytes:
    """PNG of one clip: its waveform, the true speech frames and the predicted speech probability
    (frames at or above 0.5 count as speech), on one time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (wave_axes, frame_axes) = plt.subplots(
        2, 1, figsize=(9, 4.2), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    wave_axes.plot(np.arange(len(waveform)) / sample_rate, waveform, color="0.35", linewidth=0.5)
    times = np.arange(len(truth)) * hop_seconds
    for row, (frames, colour, name) in enumerate(
        [(truth == 1, "tab:green", "true speech"), (speech_probability >= 0.5, "tab:orange", "predicted speech")]
    ):
        wave_axes.fill_between(
            times, -1.05 - 0.12 * row, -0.95 - 0.12 * row, where=frames, step="mid", color=colour, label=name
        )
    wave_axes.set_ylim(-1.35, 1.05)
    wave_axes.set_ylabel("amplitude")
    wave_axes.legend(loc="upper right", fontsize=8)
    wave_axes.set_title(title or "voice activity")
    frame_axes.step(times, truth, where="mid", color="tab:green", label="truth")
    frame_axes.plot(times, speech_probability, color="tab:orange", label="P(speech)")
    frame_axes.axhline(0.5, color="0.6", linewidth=0.6, linestyle="--")
    frame_axes.set_ylim(-0.05, 1.05)
    frame_axes.set_xlabel("time (s)")
    frame_axes.set_ylabel("speech")
    frame_axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _markdown(metrics: dict[str, Any], title: str) -> str:
    counted = f"{metrics['examples']} examples"
    if "sequences" in metrics:
        counted = f"{metrics['examples']} frames of {metrics['sequences']} sequences"
    lines = [f"# {title}", "", f"{counted}, {len(metrics['class_names'])} classes.", ""]
    if metrics.get("validation"):
        lines += [f"Validation during training: {metrics['validation']}.", ""]
    lines += ["| metric | value |", "|---|---:|"]
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "cohen_kappa", "log_loss", "bits_per_step")
    for key in (*keys, "expected_calibration_error"):
        if key not in metrics:
            continue
        lines.append(f"| {key.replace('_', ' ')} | {metrics[key]:.4f} |")
    if metrics["top_confusions"]:
        lines += ["", "## Most frequent confusions", "", "| true | predicted | count | rate |", "|---|---|---:|---:|"]
        lines += [
            f"| {c['true']} | {c['predicted']} | {c['count']} | {c['rate']:.3f} |" for c in metrics["top_confusions"]
        ]
    if "per_speaker_accuracy" in metrics:
        examples = metrics["per_speaker_examples"]
        lines += ["", "## Accuracy per speaker", "", "| speaker | clips | accuracy |", "|---|---:|---:|"]
        lines += [f"| {s} | {examples[s]} | {a:.4f} |" for s, a in metrics["per_speaker_accuracy"].items()]
    lines += ["", "Per-class precision, recall and F1: `classification_report.txt`; every number: `report.json`;",
              "confusion matrix: `confusion_matrix.png` / `.csv`; calibration: `reliability_diagram.png`;",
              "each prediction: `predictions.csv`; all of it, and the misclassified clips to listen to: `report.html`.",
              ""]  # fmt: skip
    return "\n".join(lines)


def write_report(
    out_dir: str | os.PathLike,
    targets: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    paths: Sequence[str] | None = None,
    speakers: Sequence[str | None] | None = None,
    title: str = "Evaluation report",
    extra: dict[str, Any] | None = None,
    frames: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Compute the metrics and write every report file into ``out_dir``; returns the metrics.

    ``frames`` (per-step tasks): the number of frames of each sequence, whose targets and
    probabilities are concatenated in ``targets`` / ``probabilities``; ``paths`` and ``speakers``
    are then per sequence.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if frames is not None and speakers is not None:
        speakers_of_frames: Sequence[str | None] | None = list(np.repeat(np.asarray(speakers, dtype=object), frames))
    else:
        speakers_of_frames = speakers
    metrics = compute_metrics(targets, probabilities, class_names, speakers_of_frames)
    if frames is not None:
        metrics["sequences"] = len(frames)
        metrics["bits_per_step"] = float(metrics["log_loss"] / np.log(2))
    metrics.update(extra or {})
    metrics["title"] = title
    atomic_write_json(out / "report.json", metrics)
    atomic_write_text(out / "report.md", _markdown(metrics, title))
    atomic_write_text(
        out / "classification_report.txt",
        classification_report(
            targets, probabilities.argmax(1), labels=np.arange(len(class_names)), target_names=list(class_names),
            digits=4, zero_division=0,
        ),
    )  # fmt: skip
    matrix = np.asarray(metrics["confusion_matrix"])
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["true\\predicted", *class_names])
    writer.writerows([[name, *row] for name, row in zip(class_names, matrix.tolist(), strict=True)])
    atomic_write_text(out / "confusion_matrix.csv", table.getvalue())
    atomic_write_bytes(out / "confusion_matrix.png", plot_confusion_matrix(matrix, class_names, title))
    atomic_write_bytes(out / "reliability_diagram.png", plot_reliability(metrics["reliability"], title))
    if frames is not None:
        atomic_write_text(out / "predictions.csv", _sequence_table(targets, probabilities, frames, paths, speakers))
    else:
        atomic_write_text(out / "predictions.csv", _clip_table(targets, probabilities, class_names, paths, speakers))
    from speechrnn.report_page import write_report_page  # the page module groups speakers with this one's rule

    write_report_page(out)
    return metrics


def _clip_table(
    targets: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    paths: Sequence[str] | None,
    speakers: Sequence[str | None] | None,
) -> str:
    """``predictions.csv`` of whole clips: labels, the predicted and the true class's probability,
    the :data:`TOP_K` classes with theirs (a JSON list of ``[label, probability]``) and the speaker."""
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["path", "true_label", "predicted_label", "probability", "speaker", "true_probability",
                     "top_probabilities"])  # fmt: skip
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
    for i in range(len(targets)):
        top = [[class_names[c], round(float(probabilities[i, c]), 6)] for c in ranked[i]]
        writer.writerow([
            paths[i] if paths is not None else i,
            class_names[targets[i]],
            class_names[ranked[i, 0]],
            f"{probabilities[i, ranked[i, 0]]:.6f}",
            (speakers[i] or "") if speakers is not None else "",
            f"{probabilities[i, targets[i]]:.6f}",
            json.dumps(top),
        ])  # fmt: skip
    return table.getvalue()


def _sequence_table(
    targets: np.ndarray,
    probabilities: np.ndarray,
    frames: Sequence[int],
    paths: Sequence[str] | None,
    speakers: Sequence[str | None] | None,
) -> str:
    """``predictions.csv`` of a per-step task: one row per sequence with its frame accuracy."""
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["path", "frames", "frame_accuracy", "speaker"])
    correct = probabilities.argmax(1) == targets
    ends = np.cumsum(frames)
    for i, (end, count) in enumerate(zip(ends, frames, strict=True)):
        writer.writerow([
            paths[i] if paths is not None else i,
            count,
            f"{correct[end - count : end].mean():.6f}",
            (speakers[i] or "") if speakers is not None else "",
        ])  # fmt: skip
    return table.getvalue()


def report_split(
    model: RNNClassifier,
    datamodule: SequenceDataModuleBase,
    split: Split,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the evaluation report of ``model`` on ``split`` into ``out_dir``."""
    if model.class_names != datamodule.class_names:
        raise ValueError(
            f"the checkpoint's classes {model.class_names} differ from the data's {datamodule.class_names}"
        )
    targets, probabilities, sources, speakers, frames = predict_split(model, datamodule, split, device)
    return write_report(
        out_dir, targets, probabilities, model.class_names, sources, speakers,
        title=f"{type(datamodule).__name__}: {split} split", extra=extra,
        frames=None if frames is None else frames.tolist(),
    )  # fmt: skip
