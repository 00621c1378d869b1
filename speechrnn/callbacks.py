"""Small Lightning callbacks speechrnn adds to every run."""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.rank_zero import rank_zero_info


class EpochTimer(pl.Callback):
    """Wall-clock seconds of each training epoch (validation excluded), logged as ``time/epoch_seconds``."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.durations.append(time.perf_counter() - self._start)
        pl_module.log("time/epoch_seconds", self.durations[-1], on_epoch=True, on_step=False)


class LastCheckpoint(ModelCheckpoint):
    """Rewrites ``last.ckpt`` after every epoch, so ``--ckpt_path last`` resumes the latest state.

    A class of its own gives it its own checkpoint state key, so it coexists with a best-checkpoint
    callback configured the same way (``--checkpoint.monitor null`` keeps the latest epoch there too).
    """

    def __init__(self) -> None:
        super().__init__(filename="last", save_top_k=1, enable_version_counter=False)


class TrainingBudget(pl.Callback):
    """Chooses the number of epochs from the size of the training split, for runs that leave
    ``--trainer.max_epochs`` unset: enough epochs for ``min_steps`` optimiser steps, at least
    ``min_epochs`` and at most ``max_epochs``.

    A fixed epoch count suits one corpus size only: ten epochs are 30,000 steps on 100k clips but 70
    on 300 sequences (measured on 300 FSDD clips: 75.6 % after ten epochs, 88.9 % after 100).
    The learning-rate schedule spans the chosen budget, so it anneals before training ends.
    """

    def __init__(self, min_steps: int = 1000, min_epochs: int = 10, max_epochs: int = 100) -> None:
        self.min_steps, self.min_epochs, self.max_epochs = min_steps, min_epochs, max_epochs
        self.epochs: int | None = None

    def epochs_for(self, batches_per_epoch: int) -> int:
        wanted = math.ceil(self.min_steps / max(1, batches_per_epoch))
        return int(min(self.max_epochs, max(self.min_epochs, wanted)))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.datamodule is None:
            return
        batches = len(trainer.datamodule.train_dataloader()) // max(1, trainer.accumulate_grad_batches)
        self.epochs = self.epochs_for(batches)
        trainer.fit_loop.max_epochs = self.epochs
        rank_zero_info(f"training budget: {self.epochs} epochs of {batches} steps (--trainer.max_epochs sets it)")
