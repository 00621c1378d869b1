"""``python -m speechrnn.adapt --ckpt PATH [RECORDINGS ...]``: adapt a trained model to new voices
from their unlabelled recordings (self-training), then write the adapted checkpoint(s) and a report.

A model trained on a few speakers errs on a new voice consistently (one speaker's "two" heard as
"four"), yet most of that voice's clips it gets right, and confidently. Self-training labels the
voice's clips with the model's own confident predictions, fine-tunes on the training split plus
those clips, and repeats: the model learns the new voice from the clips it already understands. No
label of the adapted recordings is used. Measured on FSDD leave-one-speaker-out:
``benchmarks/README.md``, "New speakers".

Without RECORDINGS, the voices of ``--split`` (test or val) of the run's data are adapted to. When
their speakers are known, each voice is adapted on its own from the same starting model
(``--adapt.per_voice``): adapting to many voices of a few clips each at once lowered accuracy
(Speech Commands test voices, 95.2 % -> 93.7 %), while one voice with many clips gains. The
split's labels only score the report, over the whole split (the union of every voice's
predictions). One voice (FSDD leave-one-speaker-out) writes ``adapted.ckpt`` as before; several
write ``voices/<voice>.ckpt`` with ``voices/index.json``, each checkpoint for its own voice only
(transductive). A voice with fewer than ``--adapt.min_clips`` clips, or none the model is confident
about, keeps the original model; when no voice is left the command refuses. Each voice costs
``--adapt.rounds`` epochs over the training split.

RECORDINGS (audio files, or folders searched recursively) are a user's own recordings, each
argument one voice, as ``python -m speechrnn.predict`` takes them. They are featurised with the
checkpoint's settings and normalised as in training (per utterance, with the training statistics,
or with their own voice's statistics: :mod:`speechrnn.data.corpora.unlabelled`), and the model is
fine-tuned on the run's training split plus them. They have no labels, so no accuracy is reported:
``adaptation.json`` and ``changes.csv`` give each file's label and probability before and after.
A voice with too few recordings, or none confident, is refused before any fine-tuning.

Never worse: first the same adaptation runs on the validation voices that training never heard
(``--adapt.check_validation``), whose labels are known. When it does not raise their accuracy, the
unadapted model is kept: no checkpoint is written, the report is the unadapted model's, and
``adaptation.json`` says so with both validation figures.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from jsonargparse import SUPPRESS

from speechrnn.cli import option_errors, parse_with_run_data, resolve_device, trainer_defaults
from speechrnn.data.base import SequenceDataModuleBase
from speechrnn.data.corpora.unlabelled import RecordingsDataModule, voices_of_arguments
from speechrnn.data.splits import Split
from speechrnn.errors import ConfigError, run_entry_point
from speechrnn.evaluate import build_parser as evaluation_parser
from speechrnn.io import atomic_write_json, atomic_write_text
from speechrnn.models.classifier import RNNClassifier, output_activation
from speechrnn.reports import write_report
from speechrnn.split_predictions import split_probabilities

MIN_CLIPS = 10
"""Fewest clips of a voice that self-training adapts to (``--adapt.min_clips``)."""
NO_LABELS = "not reported: the recordings have no labels"
CHANGES_COLUMNS = ("path", "voice", "label_before", "probability_before", "label_after", "probability_after", "changed")
"""Columns of ``changes.csv``: each recording's label and its probability before and after adaptation."""


@dataclasses.dataclass(frozen=True)
class AdaptSettings:
    """How a model adapts to unlabelled recordings."""

    rounds: int = 4
    """Rounds of pseudo-labelling and fine-tuning (each labels the clips again with the adapted model)."""
    threshold: float = 0.7
    """Clips whose top class probability is below this are left out of the round."""
    epochs: int = 1
    """Fine-tuning epochs per round, over the training split plus the pseudo-labelled clips."""
    lr: float = 1e-3
    """Constant AdamW learning rate of the fine-tuning (the model's weight decay and label smoothing)."""
    min_clips: int = MIN_CLIPS
    """Fewest clips of a voice to adapt to; a voice with fewer keeps the original model (refused for RECORDINGS)."""
    per_voice: bool = True
    """Adapt each voice of the split on its own when speakers are known (false: the whole split at once)."""
    check_validation: bool = True
    """Adapt to the validation voices unheard in training first, and keep the unadapted model unless it helps them."""

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"adapt.rounds must be >= 1, got {self.rounds}")
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"adapt.threshold must be in [0, 1), got {self.threshold}")
        if self.epochs < 1:
            raise ConfigError(f"adapt.epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"adapt.lr must be > 0, got {self.lr}")
        if self.min_clips < 1:
            raise ConfigError(f"adapt.min_clips must be >= 1, got {self.min_clips}")


@dataclasses.dataclass
class VoiceOutcome:
    """One voice's adaptation: its clips (stored indices), the probabilities before and after, what
    each round used, its checkpoint, or why it was left unadapted (``skipped``)."""

    name: str
    indices: np.ndarray
    before: np.ndarray
    after: np.ndarray
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    checkpoint: Path | None = None
    skipped: str | None = None


@torch.inference_mode()
def subset_probabilities(
    model: RNNClassifier, datamodule: SequenceDataModuleBase, indices: np.ndarray, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Stored ``indices`` (in loader order) and their class probabilities, batched and featurised as
    :func:`speechrnn.split_predictions.split_probabilities` does for a whole split."""
    datamodule.setup("test")
    assert datamodule.store is not None
    model = model.to(device).eval()
    loader = datamodule.subset_dataloader(indices)
    outputs, order = [], []
    for batch in loader:
        features, lengths, *_ = datamodule.featurize((batch[0].to(device), *batch[1:]))
        outputs.append(output_activation(model(features, lengths), model.hparams.task).cpu())
        order.append(batch[3])
    return torch.cat(order).numpy(), torch.cat(outputs).numpy()


def restart_augmentation(datamodule: SequenceDataModuleBase) -> None:
    """Rewind the data's augmentation draws (speed, warp, noise, shift) to their seed, as a new
    DataModule has them: each adaptation then depends on its seed only, not on what ran before it
    (another voice's, the validation check's)."""
    source = datamodule.base if isinstance(datamodule, RecordingsDataModule) else datamodule
    augment = getattr(source, "augment", None)
    if augment is not None and getattr(augment, "enabled", False) and hasattr(source, "augmenter"):
        source.augmenter.generator.manual_seed(augment.seed)


def self_train(
    model: RNNClassifier,
    datamodule: SequenceDataModuleBase,
    split: Split = "test",
    settings: AdaptSettings | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = False,
    indices: np.ndarray | None = None,
) -> tuple[list[dict[str, Any]], pl.Trainer]:
    """Adapt ``model`` in place to the recordings of ``split`` (or only its stored ``indices``: one
    voice) without their labels; returns what each round used (clips, pseudo-labelled clips, their
    mean confidence) and the last round's trainer (to save the adapted checkpoint). The data's
    labelled training split is restored after."""
    settings = settings or AdaptSettings()
    if model.hparams.task != "classification":
        raise ConfigError(f"adaptation needs a whole-sequence classifier; this model's task is {model.hparams.task}")
    pl.seed_everything(seed, verbose=False)
    restart_augmentation(datamodule)
    model.hparams.lr = settings.lr
    model.hparams.scheduler = "none"
    history: list[dict[str, Any]] = []
    trainer: pl.Trainer | None = None
    on_gpu = str(device).startswith("cuda")
    try:
        for round_ in range(1, settings.rounds + 1):
            if indices is None:
                used, probabilities, _ = split_probabilities(model, datamodule, split, device)
            else:
                used, probabilities = subset_probabilities(model, datamodule, indices, device)
            confidence, labels = probabilities.max(axis=1), probabilities.argmax(axis=1)
            keep = confidence >= settings.threshold
            datamodule.pseudo_label(used[keep], labels[keep])
            history.append(
                {
                    "round": round_,
                    "clips": len(used),
                    "pseudo_labelled": int(keep.sum()),
                    "mean_confidence": float(confidence.mean()),
                }
            )
            trainer = pl.Trainer(
                **trainer_defaults(device),
                **FINE_TUNING,
                accelerator="gpu" if on_gpu else "cpu",
                max_epochs=settings.epochs,
                enable_progress_bar=progress,
            )
            model.train()  # Lightning keeps the mode it finds; the predictions above left eval
            trainer.fit(model, datamodule=datamodule)
    finally:
        datamodule.pseudo_label(None)
    model.eval()
    assert trainer is not None
    return history, trainer


FINE_TUNING: dict[str, Any] = {
    "devices": 1,
    "limit_val_batches": 0,
    "num_sanity_val_steps": 0,
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
}
"""What an adaptation round's Trainer does besides fit's defaults: train only, on one device, quietly."""


def save_adapted(trainer: pl.Trainer, path: Path) -> Path:
    """The adapted model's checkpoint, written beside ``path`` and renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        trainer.save_checkpoint(partial, weights_only=True)  # the model and its data settings, no optimiser state
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def group_by_voice(
    datamodule: SequenceDataModuleBase, indices: np.ndarray, per_voice: bool, whole: str
) -> tuple[dict[str, np.ndarray], str]:
    """``indices`` grouped by their records' speakers (sorted by name), or all of them as one group
    named ``whole`` when ``per_voice`` is off or a speaker is unknown; and how, in words."""
    speakers = [datamodule.record_of(int(i)).speaker for i in indices]
    if not per_voice:
        return {whole: indices}, "all clips at once (adapt.per_voice false)"
    if any(s is None for s in speakers):
        return {whole: indices}, "all clips at once (speakers unknown)"
    names = sorted(set(speakers))  # type: ignore[type-var]
    array = np.array(speakers, dtype=object)
    groups = {str(name): indices[array == name] for name in names}
    return groups, "one voice" if len(groups) == 1 else f"each of {len(groups)} voices on its own"


def screen(
    voices: dict[str, np.ndarray], confidence: dict[int, float], settings: AdaptSettings, unit: str = "clip(s)"
) -> dict[str, str | None]:
    """Why each voice cannot be adapted to (None when it can): fewer than ``min_clips`` clips, or
    none whose top probability under the starting model reaches ``threshold``."""
    reasons: dict[str, str | None] = {}
    for name, indices in voices.items():
        confident = sum(confidence[int(i)] >= settings.threshold for i in indices)
        if len(indices) < settings.min_clips:
            reasons[name] = f"{len(indices)} {unit}, fewer than adapt.min_clips={settings.min_clips}"
        elif confident == 0:
            reasons[name] = f"none of its {len(indices)} {unit} reaches adapt.threshold={settings.threshold}"
        else:
            reasons[name] = None
    return reasons


def listed(reasons: dict[str, str | None], limit: int = 5) -> str:
    """``name: reason; ...`` of the voices with a reason, the first ``limit`` of them."""
    bad = [f"{name}: {why}" for name, why in reasons.items() if why]
    return "; ".join(bad[:limit]) + (f"; and {len(bad) - limit} more" if len(bad) > limit else "")


def adapt_voices(
    model: RNNClassifier,
    datamodule: SequenceDataModuleBase,
    split: Split,
    voices: dict[str, np.ndarray],
    reasons: dict[str, str | None],
    before: dict[int, np.ndarray],
    settings: AdaptSettings,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = False,
    save: Callable[[str, pl.Trainer], Path] | None = None,
    check: dict[str, Any] | None = None,
) -> list[VoiceOutcome]:
    """Adapt a copy of ``model`` to each voice (stored indices of ``split``) from the same start,
    saving each with ``save``; ``model`` is left as it was. Voices with a reason keep the start's
    probabilities (``before``, by stored index). One voice covering the whole split is adapted
    exactly as :func:`self_train` adapts a split. When the validation ``check`` ran and adaptation
    did not help there, every voice keeps the starting model."""
    if check is not None and check["checked"] and not check["helped"]:
        return unadapted(voices, before)
    start = {key: value.detach().clone() for key, value in model.state_dict().items()}
    kept = (model.hparams.lr, model.hparams.scheduler, model.data_config)
    # A model fresh from its checkpoint restores the run's saved random state at its first epoch
    # (RNNClassifier.on_train_epoch_start); every voice starts from that same state.
    resumed = getattr(model, "_resumed_rng_states", None)
    outcomes = []
    try:
        for name, indices in voices.items():
            previous = np.stack([before[int(i)] for i in indices])
            if reasons.get(name):
                outcomes.append(VoiceOutcome(name, indices, previous, previous, skipped=reasons[name]))
                continue
            model.load_state_dict(start)
            model._resumed_rng_states = resumed
            whole = len(voices) == 1 and len(indices) == len(datamodule.splits[split])
            history, trainer = self_train(
                model, datamodule, split, settings, device, seed, progress, None if whole else indices
            )
            if whole:
                used, probabilities, _ = split_probabilities(model, datamodule, split, device)
            else:
                used, probabilities = subset_probabilities(model, datamodule, indices, device)
            row = {int(i): r for r, i in enumerate(used)}
            after = probabilities[[row[int(i)] for i in indices]]
            checkpoint = save(name, trainer) if save is not None else None
            outcomes.append(VoiceOutcome(name, indices, previous, after, history, checkpoint))
    finally:
        model.load_state_dict(start)
        model._resumed_rng_states = resumed
        model.hparams.lr, model.hparams.scheduler, model.data_config = kept
        model.eval()
    return outcomes


def unadapted(voices: dict[str, np.ndarray], before: dict[int, np.ndarray]) -> list[VoiceOutcome]:
    """Every voice left as the starting model predicts it (the validation voices said no)."""
    outcomes = []
    for name, indices in voices.items():
        probabilities = np.stack([before[int(i)] for i in indices])
        outcomes.append(VoiceOutcome(name, indices, probabilities, probabilities))
    return outcomes


def combined_rounds(outcomes: list[VoiceOutcome]) -> list[dict[str, Any]]:
    """Each round over every adapted voice: clips, pseudo-labelled clips and their mean confidence."""
    adapted = [o for o in outcomes if o.skipped is None]
    if len(adapted) == 1:
        return adapted[0].history
    rounds = []
    for number in range(max((len(o.history) for o in adapted), default=0)):
        entries = [o.history[number] for o in adapted]
        clips = sum(e["clips"] for e in entries)
        rounds.append(
            {
                "round": number + 1,
                "clips": clips,
                "pseudo_labelled": sum(e["pseudo_labelled"] for e in entries),
                "mean_confidence": sum(e["mean_confidence"] * e["clips"] for e in entries) / max(clips, 1),
            }
        )
    return rounds


def accuracy(outcomes: list[VoiceOutcome], targets: np.ndarray, which: str) -> float:
    """Accuracy over every voice's clips of the ``before`` or ``after`` probabilities."""
    indices = np.concatenate([o.indices for o in outcomes])
    predicted = np.concatenate([getattr(o, which).argmax(axis=1) for o in outcomes])
    return float((predicted == targets[indices]).mean())


def validation_check(
    model: RNNClassifier,
    datamodule: SequenceDataModuleBase,
    settings: AdaptSettings,
    adapted_split: str,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Adapt to the validation voices training never heard, as the requested recordings will be,
    and score it with their labels: ``checked``, and either ``reason`` (why no check) or
    ``accuracy_before``, ``accuracy_after`` and ``helped`` (after > before). ``model`` is left as it was."""

    def unchecked(reason: str) -> dict[str, Any]:
        return {"checked": False, "reason": reason}

    if not settings.check_validation:
        return unchecked("adapt.check_validation is false")
    if adapted_split == "val":
        return unchecked("the adapted split is the validation split")
    val = datamodule.splits.get("val")
    if val is None or len(val) == 0:
        return unchecked("the data has no validation split")
    speakers = {int(i): datamodule.record_of(int(i)).speaker for i in np.concatenate([datamodule.splits["train"], val])}
    if any(s is None for s in speakers.values()):
        return unchecked("speakers unknown: cannot tell which validation voices training never heard")
    heard = {speakers[int(i)] for i in datamodule.splits["train"]}
    new = np.array([i for i in val if speakers[int(i)] not in heard], dtype=np.int64)
    if len(new) == 0:
        return unchecked("no speaker-disjoint validation: every validation voice was heard in training")
    indices, probabilities = subset_probabilities(model, datamodule, new, device)
    before = {int(i): p for i, p in zip(indices, probabilities, strict=True)}
    voices, how = group_by_voice(datamodule, indices, settings.per_voice, "validation voices")
    reasons = screen(voices, {i: float(p.max()) for i, p in before.items()}, settings)
    if all(reasons.values()):
        return unchecked(f"no validation voice can be adapted to ({listed(reasons)})")
    outcomes = adapt_voices(model, datamodule, "val", voices, reasons, before, settings, device, seed, progress)
    targets = datamodule.targets()
    result = {
        "checked": True,
        "voices": sorted(name for name, why in reasons.items() if why is None),
        "adapted": how,
        "clips": int(len(indices)),
        "accuracy_before": accuracy(outcomes, targets, "before"),
        "accuracy_after": accuracy(outcomes, targets, "after"),
    }
    result["helped"] = result["accuracy_after"] > result["accuracy_before"]
    return result


def describe_validation(check: dict[str, Any]) -> str:
    """One line on the validation check."""
    if not check["checked"]:
        return f"adaptation not checked on validation voices: {check['reason']}"
    figures = f"({100 * check['accuracy_before']:.1f} % -> {100 * check['accuracy_after']:.1f} %)"
    if check["helped"]:
        return f"adaptation helped on the validation voices {figures}"
    return f"adaptation did not help on the validation voices {figures}: keeping the unadapted model"


def safe_name(name: str, taken: set[str]) -> str:
    """A file name for voice ``name`` (letters, digits, ``._-``), distinct from those in ``taken``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "voice"
    candidate, number = stem, 1
    while candidate in taken:
        number += 1
        candidate = f"{stem}-{number}"
    taken.add(candidate)
    return candidate


def checkpoint_saver(out: Path, several: bool) -> Callable[[str, pl.Trainer], Path]:
    """Where each voice's adapted checkpoint goes: ``out/adapted.ckpt`` for one voice,
    ``out/voices/<voice>.ckpt`` for several."""
    taken: set[str] = set()

    def save(name: str, trainer: pl.Trainer) -> Path:
        path = out / "voices" / f"{safe_name(name, taken)}.ckpt" if several else out / "adapted.ckpt"
        return save_adapted(trainer, path)

    return save


def write_voice_index(out: Path, outcomes: list[VoiceOutcome], original: Path, extra: dict[str, dict]) -> Path:
    """``out/voices/index.json``: each voice's adapted checkpoint (relative to the index), and the
    voices that keep the original one, with why."""
    voices = {
        o.name: {"checkpoint": o.checkpoint.name, "clips": int(len(o.indices)), **extra.get(o.name, {})}
        for o in outcomes
        if o.checkpoint is not None
    }
    skipped = {o.name: o.skipped for o in outcomes if o.skipped}
    return atomic_write_json(
        out / "voices" / "index.json",
        {
            "note": "each checkpoint is adapted to its own voice's recordings (transductive); use it for that voice "
            "only. Voices under 'unadapted' keep the original checkpoint.",
            "original": str(original),
            "voices": voices,
            "unadapted": skipped,
        },
    )


def build_parser() -> Any:
    """``python -m speechrnn.adapt``'s options: the evaluation options, the self-training settings and
    the optional RECORDINGS."""
    parser = evaluation_parser("adapt", __doc__)
    parser.add_argument(
        "recordings",
        type=Path,
        nargs="*",
        default=SUPPRESS,  # an empty list would hide the recordings of a --config file
        metavar="RECORDINGS",
        help="Your own unlabelled recordings: audio files or folders (searched recursively), each argument one "
        "voice. Without them the --split of the run's data is adapted to.",
    )
    parser.add_class_arguments(AdaptSettings, "adapt", help="Self-training settings.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the fine-tuning (dropout, augmentation).")
    parser.add_argument("--progress", type=bool, default=False, help="Show Lightning's progress bar.")
    return parser


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Adapt the checkpoint to a split's voices, or to RECORDINGS; returns the summary written to
    ``adaptation.json``."""
    parser = build_parser()
    config = parse_with_run_data(parser, args)
    recordings = list(getattr(config, "recordings", None) or [])
    if config.split == "train" and not recordings:
        raise ConfigError("--split train: the training split has labels; adapt to val or test")
    with option_errors():
        settings = AdaptSettings(**vars(config.adapt))
    voices = voices_of_arguments(recordings) if recordings else None
    if voices is not None:
        reasons = {
            name: f"{len(paths)} recording(s), fewer than adapt.min_clips={settings.min_clips}"
            for name, paths in voices.items()
            if len(paths) < settings.min_clips
        }
        if reasons:
            raise ConfigError(f"too few recordings to adapt to: {listed(reasons)}")  # type: ignore[arg-type]
    with option_errors():
        datamodule = parser.instantiate_classes(config).data
    model = RNNClassifier.from_checkpoint(config.ckpt, map_location="cpu")
    if model.class_names != datamodule.class_names:
        raise ConfigError(
            f"the checkpoint's classes {model.class_names} differ from the data's {datamodule.class_names}"
        )
    device = resolve_device(config.device)
    if voices is not None:
        return adapt_recordings(config, settings, model, datamodule, voices, device)
    return adapt_split(config, settings, model, datamodule, device)


def adapt_split(
    config: Any, settings: AdaptSettings, model: RNNClassifier, datamodule: SequenceDataModuleBase, device: str
) -> dict[str, Any]:
    """Adapt to the voices of ``config.split``; the report scores the union of their predictions."""
    split = config.split
    out = config.out or config.ckpt.resolve().parent.parent / f"adapt_{split}"
    indices, probabilities, _ = split_probabilities(model, datamodule, split, device)
    before = {int(i): p for i, p in zip(indices, probabilities, strict=True)}
    targets = datamodule.targets()
    accuracy_before = float((probabilities.argmax(axis=1) == targets[indices]).mean())
    voices, how = group_by_voice(datamodule, indices, settings.per_voice, f"{split} split")
    reasons = screen(voices, {i: float(p.max()) for i, p in before.items()}, settings)
    if all(reasons.values()):
        raise ConfigError(f"nothing to adapt to in the {split} split: {listed(reasons)}")
    check = validation_check(model, datamodule, settings, split, device, config.seed, config.progress)
    keep, several = check["checked"] and not check["helped"], len(voices) > 1
    outcomes = adapt_voices(
        model, datamodule, split, voices, reasons, before, settings, device, config.seed, config.progress,
        save=checkpoint_saver(out, several), check=check,
    )  # fmt: skip
    after = {int(i): p for o in outcomes for i, p in zip(o.indices, o.after, strict=True)}
    adapted = [o for o in outcomes if o.checkpoint is not None]
    single = adapted[0].checkpoint if adapted and not several else None
    index = None
    if several and adapted:
        extra = {o.name: {f"accuracy_{w}": accuracy([o], targets, w) for w in ("before", "after")} for o in adapted}
        index = write_voice_index(out, outcomes, config.ckpt, extra)
    records = [datamodule.record_of(int(i)) for i in indices]
    report_dir = out / f"report_{split}"
    metrics = write_report(
        report_dir, targets[indices], np.stack([after[int(i)] for i in indices]), model.class_names,
        [r.source for r in records], [r.speaker for r in records],
        title=f"{type(datamodule).__name__}: {split} split",
        extra={
            "checkpoint": str(single or index or config.ckpt),
            "adapted_from": str(config.ckpt),
            "model": "unadapted" if keep else "adapted per voice" if several else "adapted",
        },
    )  # fmt: skip
    result = {
        "checkpoint": str(config.ckpt),
        "adapted_checkpoint": None if single is None else str(single),
        "voice_checkpoints": None if index is None else str(index),
        "split": split,
        "settings": dataclasses.asdict(settings),
        "adapted": how,
        "decision": "kept the unadapted model" if keep else "adapted",
        "validation": check,
        "rounds": combined_rounds(outcomes),
        "voices": [
            {
                "voice": o.name,
                "clips": int(len(o.indices)),
                "accuracy_before": accuracy([o], targets, "before"),
                "accuracy_after": accuracy([o], targets, "after"),
                "rounds": o.history,
                "checkpoint": None if o.checkpoint is None else str(o.checkpoint),
                "skipped": o.skipped,
            }
            for o in outcomes
        ],
        "accuracy_before": accuracy_before,
        "accuracy_after": metrics["accuracy"],
    }
    atomic_write_json(out / "adaptation.json", result)
    print(describe_validation(check))
    skipped = [o for o in outcomes if o.skipped]
    if skipped and not keep:
        reasons = {o.name: o.skipped for o in skipped}
        print(f"{len(skipped)} of {len(outcomes)} voice(s) keep the unadapted model: {listed(reasons)}")
    if keep:
        print(f"{split}: accuracy {accuracy_before:.4f} (the unadapted model); report in {report_dir}")
    else:
        print(
            f"{split}: accuracy {accuracy_before:.4f} before, {metrics['accuracy']:.4f} after {settings.rounds} rounds "
            f"of self-training ({how}); adapted checkpoint(s): {single or index}; report in {report_dir}"
        )
    return result


def adapt_recordings(
    config: Any,
    settings: AdaptSettings,
    model: RNNClassifier,
    base: SequenceDataModuleBase,
    voices: dict[str, list[Path]],
    device: str,
) -> dict[str, Any]:
    """Adapt to a user's recordings, one voice per argument; report each file's label before and after."""
    out = config.out or config.ckpt.resolve().parent.parent / "adapt_recordings"
    data = RecordingsDataModule(base, voices)
    data.setup("fit")
    trained, current = model.data_config.get("features"), base.feature_settings
    same = current is not None and json.dumps(trained, sort_keys=True) == json.dumps(current.to_dict(), sort_keys=True)
    if trained and current is not None and not same:
        raise ConfigError(
            f"the data's feature settings {current.to_dict()} differ from the checkpoint's {trained}: the recordings "
            "would be featurised unlike the model's training (leave out the --data.features overrides)"
        )
    indices, probabilities, _ = split_probabilities(model, data, "test", device)
    before = {int(i): p for i, p in zip(indices, probabilities, strict=True)}
    groups = data.voice_indices()
    reasons = screen(groups, {i: float(p.max()) for i, p in before.items()}, settings, "recording(s)")
    if any(reasons.values()):
        raise ConfigError(f"too little to adapt to: {listed(reasons)}")
    check = validation_check(model, base, settings, "recordings", device, config.seed, config.progress)
    keep, several = check["checked"] and not check["helped"], len(groups) > 1
    outcomes = adapt_voices(
        model, data, "test", groups, reasons, before, settings, device, config.seed, config.progress,
        save=checkpoint_saver(out, several), check=check,
    )  # fmt: skip
    names = model.class_names
    files, rows = [], []
    for outcome in outcomes:
        for index, old, new in zip(outcome.indices, outcome.before, outcome.after, strict=True):
            path = data.record_of(int(index)).source
            entry = {
                "path": path,
                "voice": outcome.name,
                "before": {"label": names[int(old.argmax())], "probability": float(old.max())},
                "after": {"label": names[int(new.argmax())], "probability": float(new.max())},
            }
            entry["changed"] = entry["before"]["label"] != entry["after"]["label"]
            files.append(entry)
            rows.append([path, outcome.name, entry["before"]["label"], f"{old.max():.6f}",
                         entry["after"]["label"], f"{new.max():.6f}", int(entry["changed"])])  # fmt: skip
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CHANGES_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(out / "changes.csv", buffer.getvalue())
    adapted = [o for o in outcomes if o.checkpoint is not None]
    single = adapted[0].checkpoint if adapted and not several else None
    index = write_voice_index(out, outcomes, config.ckpt, {}) if several and adapted else None
    changed = sum(f["changed"] for f in files)
    result = {
        "checkpoint": str(config.ckpt),
        "recordings": [str(r) for r in voices],
        "adapted_checkpoint": None if single is None else str(single),
        "voice_checkpoints": None if index is None else str(index),
        "settings": dataclasses.asdict(settings),
        "decision": "kept the unadapted model" if keep else "adapted",
        "validation": check,
        "accuracy": NO_LABELS,
        "clips": len(files),
        "changed": changed,
        "rounds": combined_rounds(outcomes),
        "voices": [
            {
                "voice": o.name,
                "speaker": data.voice_names.get(o.name, o.name),
                "clips": int(len(o.indices)),
                "changed": sum(f["changed"] for f in files if f["voice"] == o.name),
                "rounds": o.history,
                "checkpoint": None if o.checkpoint is None else str(o.checkpoint),
            }
            for o in outcomes
        ],
        "files": files,
    }
    atomic_write_json(out / "adaptation.json", result)
    print(describe_validation(check))
    where = single or index or "none written (unadapted model kept)"
    print(
        f"{len(files)} recording(s) of {len(groups)} voice(s): {changed} changed label after "
        f"{0 if keep else settings.rounds} rounds of self-training; accuracy {NO_LABELS}; adapted checkpoint(s): "
        f"{where}; per-file labels in {out / 'changes.csv'}"
    )
    return result


if __name__ == "__main__":
    run_entry_point(main)
