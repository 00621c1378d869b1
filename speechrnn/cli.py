"""The LightningCLI shared by ``python -m speechrnn.fit`` and friends: defaults and argument links."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from speechrnn.callbacks import EpochTimer
from speechrnn.data.base import SequenceDataModuleBase
from speechrnn.models.classifier import RNNClassifier

DEFAULT_DATA = "speechrnn.data.SyntheticCommandsDataModule"

# RNNClassifier keeps lengths on the CPU in its own transfer_batch_to_device, on purpose.
warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device` in `LightningModule`.*")


def default_precision() -> str:
    """bf16-mixed on GPUs that support it, 16-mixed on older GPUs, 32-bit on CPU.

    Mixed precision stays off on the CPU: there bf16 autocast slows GRUs about tenfold and can
    make oneDNN's LSTM fail.
    """
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


class SpeechRNNCLI(LightningCLI):
    """LightningCLI over :class:`RNNClassifier` and any speechrnn DataModule (``--data CLASS``).

    The DataModule's ``feature_dim``, ``num_classes`` and ``class_names`` flow into the model, so
    they are never typed. The best checkpoint (by ``val/acc``) and early stopping are configurable
    as ``--checkpoint.*`` and ``--early_stopping.*``; ``last.ckpt`` holds the latest epoch.
    """

    def __init__(self, args: Any = None, run: bool = False, **kwargs: Any) -> None:
        trainer_defaults = {
            "precision": default_precision(),
            "max_epochs": 10,
            "gradient_clip_val": 5.0,
            "log_every_n_steps": 10,
            "use_distributed_sampler": False,  # the bucketing sampler shards itself
        }
        trainer_defaults.update(kwargs.pop("trainer_defaults", {}))
        super().__init__(
            RNNClassifier,
            SequenceDataModuleBase,
            subclass_mode_data=True,
            trainer_defaults=trainer_defaults,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The Trainer, with ``last.ckpt`` rewritten after every epoch (so ``--ckpt_path last`` resumes
        from the latest state, not the best) and rich's progress bar unless progress bars are off."""
        config = self._get(self.config_init, "trainer", default={})
        if "callbacks" not in kwargs:
            callbacks = [*(config.get("callbacks") or []), EpochTimer()]
            if config.get("enable_checkpointing") is not False:
                callbacks.append(ModelCheckpoint(filename="last", save_top_k=1, enable_version_counter=False))
            if config.get("enable_progress_bar") is not False:
                callbacks.append(RichProgressBar(leave=True))
            kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    @property
    def best_checkpoint(self) -> ModelCheckpoint:
        """The callback keeping the best checkpoint by the monitored metric (``--checkpoint.*``)."""
        return self._get(self.config_init, "checkpoint")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Resume from this checkpoint ('last' resumes the latest run state).",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "data": {"class_path": DEFAULT_DATA},
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,
                "checkpoint.filename": "epoch{epoch:03d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "early_stopping.monitor": "val/acc",
                "early_stopping.mode": "max",
                "early_stopping.patience": 3,
            }
        )
        parser.link_arguments("data.feature_dim", "model.input_size", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.task", "model.task", apply_on="instantiate")
