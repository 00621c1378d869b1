"""``python -m speechrnn.adapt --ckpt PATH``: adapt a trained model to new voices from their
unlabelled recordings (self-training), then write the adapted checkpoint and its evaluation report.

A model trained on a few speakers errs on a new voice consistently (one speaker's "two" heard as
"four"), yet most of that voice's clips it gets right, and confidently. Self-training labels the
split's clips with the model's own confident predictions, fine-tunes on the training split plus
those clips, and repeats: the model learns the new voice from the clips it already understands.
No label of the adapted split is used (its labels only score the report): like per-speaker
normalisation, it needs the new voice's recordings, not their transcripts. Measured on FSDD
leave-one-speaker-out: ``benchmarks/README.md``, "New speakers".
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from speechrnn.cli import GRADIENT_CLIP_VAL, default_precision
from speechrnn.data.base import SequenceDataModuleBase, Split
from speechrnn.errors import ConfigError, checked_options, run_entry_point
from speechrnn.evaluate import build_parser as evaluation_parser
from speechrnn.evaluate import parse_with_run_data, resolve_device
from speechrnn.inference import split_probabilities
from speechrnn.io import atomic_write_json
from speechrnn.models.classifier import RNNClassifier
from speechrnn.reports import report_split


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

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"adapt.rounds must be >= 1, got {self.rounds}")
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"adapt.threshold must be in [0, 1), got {self.threshold}")
        if self.epochs < 1:
            raise ConfigError(f"adapt.epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"adapt.lr must be > 0, got {self.lr}")


def self_train(
    model: RNNClassifier,
    datamodule: SequenceDataModuleBase,
    split: Split = "test",
    settings: AdaptSettings | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], pl.Trainer]:
    """Adapt ``model`` in place to the recordings of ``split`` without their labels; returns what
    each round used (clips, pseudo-labelled clips, their mean confidence) and the last round's
    trainer (to save the adapted checkpoint). The data's labelled training split is restored after."""
    settings = settings or AdaptSettings()
    if model.hparams.task != "classification":
        raise ConfigError(f"adaptation needs a whole-sequence classifier; this model's task is {model.hparams.task}")
    pl.seed_everything(seed, verbose=False)
    model.hparams.lr = settings.lr
    model.hparams.scheduler = "none"
    history: list[dict[str, Any]] = []
    trainer: pl.Trainer | None = None
    on_gpu = str(device).startswith("cuda")
    try:
        for round_ in range(1, settings.rounds + 1):
            indices, probabilities, _ = split_probabilities(model, datamodule, split, device)
            confidence, labels = probabilities.max(axis=1), probabilities.argmax(axis=1)
            keep = confidence >= settings.threshold
            datamodule.pseudo_label(indices[keep], labels[keep])
            history.append(
                {
                    "round": round_,
                    "clips": len(indices),
                    "pseudo_labelled": int(keep.sum()),
                    "mean_confidence": float(confidence.mean()),
                }
            )
            trainer = pl.Trainer(
                accelerator="gpu" if on_gpu else "cpu",
                devices=1,
                precision=default_precision() if on_gpu else "32-true",
                max_epochs=settings.epochs,
                gradient_clip_val=GRADIENT_CLIP_VAL,
                limit_val_batches=0,
                num_sanity_val_steps=0,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=progress,
                enable_model_summary=False,
            )
            model.train()  # Lightning keeps the mode it finds; the predictions above left eval
            trainer.fit(model, datamodule=datamodule)
    finally:
        datamodule.pseudo_label(None)
    model.eval()
    assert trainer is not None
    return history, trainer


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


def build_parser() -> Any:
    parser = evaluation_parser("python -m speechrnn.adapt", __doc__)
    parser.add_class_arguments(AdaptSettings, "adapt", help="Self-training settings.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the fine-tuning (dropout, augmentation).")
    parser.add_argument("--progress", type=bool, default=False, help="Show Lightning's progress bar.")
    return parser


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Adapt the checkpoint to a split's recordings; returns the accuracy before and after."""
    parser = build_parser()
    config = parse_with_run_data(parser, args)
    if config.split == "train":
        parser.error("--split train: the training split has labels; adapt to val or test")
    with checked_options():
        settings = AdaptSettings(**vars(config.adapt))
        datamodule = parser.instantiate_classes(config).data
    model = RNNClassifier.from_checkpoint(config.ckpt, map_location="cpu")
    if model.class_names != datamodule.class_names:
        raise ConfigError(
            f"the checkpoint's classes {model.class_names} differ from the data's {datamodule.class_names}"
        )
    out = config.out or config.ckpt.resolve().parent.parent / f"adapt_{config.split}"
    device = resolve_device(config.device)
    indices, probabilities, _ = split_probabilities(model, datamodule, config.split, device)
    before = float((probabilities.argmax(axis=1) == datamodule.targets()[indices]).mean())
    history, trainer = self_train(model, datamodule, config.split, settings, device, config.seed, config.progress)
    checkpoint = save_adapted(trainer, out / "adapted.ckpt")
    metrics = report_split(
        model, datamodule, config.split, out / f"report_{config.split}", device,
        extra={"checkpoint": str(checkpoint), "adapted_from": str(config.ckpt)},
    )  # fmt: skip
    result = {
        "checkpoint": str(config.ckpt),
        "adapted_checkpoint": str(checkpoint),
        "split": config.split,
        "settings": dataclasses.asdict(settings),
        "rounds": history,
        "accuracy_before": before,
        "accuracy_after": metrics["accuracy"],
    }
    atomic_write_json(out / "adaptation.json", result)
    print(
        f"{config.split}: accuracy {before:.4f} before, {metrics['accuracy']:.4f} after {settings.rounds} rounds of "
        f"self-training; adapted checkpoint {checkpoint}; report in {out / f'report_{config.split}'}"
    )
    return result


if __name__ == "__main__":
    run_entry_point(main)
