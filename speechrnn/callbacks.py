"""Small Lightning callbacks (and the profiler) speechrnn adds to every run."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from pytorch_lightning.profilers import PassThroughProfiler
from pytorch_lightning.utilities.rank_zero import rank_zero_info

_NOTHING = contextlib.nullcontext()


class QuietProfiler(PassThroughProfiler):
    """Lightning's default profiler (which profiles nothing) without its cost: the Trainer enters
    ``profile()`` around every hook of every callback, about 80 times a training step, and the default
    builds a generator-based context manager each time. This one hands back one shared no-op context.
    ``--trainer.profiler simple`` (or any other) still replaces it."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:  # type: ignore[override]
        return _NOTHING


class CachedStateKey:
    """A callback's ``state_key`` computed once: the Trainer formats it around every hook it calls
    (six a training step), and checkpoint and early-stopping callbacks build it from a ``repr`` of
    their settings each time. The key itself is unchanged, so checkpoints resume as before; a class
    that changes the settings the key is built from calls :meth:`forget_state_key`."""

    @property
    def state_key(self) -> str:
        key = self.__dict__.get("_state_key")
        if key is None:
            key = self.__dict__["_state_key"] = super().state_key  # type: ignore[misc]
        return key

    def forget_state_key(self) -> None:
        self.__dict__.pop("_state_key", None)


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


class ThrottledProgressBar(RichProgressBar):
    """rich's progress bar, redrawn at most ``per_second`` times a second during training (and at an
    epoch's last batch): a redraw reads the logged values, which waits for the device, so redrawing
    every step would hold a fast GPU back and costs a CPU step about a tenth of a millisecond."""

    def __init__(self, per_second: float = 4.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interval = 1.0 / per_second
        self._drawn = -math.inf

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self._drawn < self.interval and batch_idx + 1 < self.total_train_batches:
            return
        self._drawn = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class LastCheckpoint(CachedStateKey, ModelCheckpoint):
    """Rewrites ``last.ckpt`` after every epoch, so ``--ckpt_path last`` resumes the latest state.

    A class of its own gives it its own checkpoint state key, so it coexists with a best-checkpoint
    callback configured the same way (``--checkpoint.monitor null`` keeps the latest epoch there too).
    """

    def __init__(self) -> None:
        super().__init__(filename="last", save_top_k=1, enable_version_counter=False)


class TrainingBudget(pl.Callback):
    """Chooses the number of epochs from the size of the training split, for runs that leave
    ``--trainer.max_epochs`` unset: enough epochs for ``min_steps`` optimiser steps, at least
    ``min_epochs`` and at most ``max_epochs``. When the data augments waveforms, at least
    ``augmented_min_epochs`` too, unless fewer epochs already make ``augmented_steps`` steps (a
    large corpus needs no 40 passes).

    A fixed epoch count suits one corpus size only: ten epochs are 30,000 steps on 100k clips but 70
    on 300 sequences (measured on 300 FSDD clips: 75.6 % after ten epochs, 88.9 % after 100).
    Waveform augmentation shows every clip as a new voice at every epoch, and the small corpora that
    get it by default need about 40 epochs (the FSDD and Speech Commands recipes). The learning-rate
    schedule spans the chosen budget, so it anneals before training ends.
    """

    def __init__(
        self,
        min_steps: int = 1000,
        min_epochs: int = 10,
        max_epochs: int = 100,
        augmented_min_epochs: int = 40,
        augmented_steps: int = 10000,
    ) -> None:
        self.min_steps, self.min_epochs, self.max_epochs = min_steps, min_epochs, max_epochs
        self.augmented_min_epochs, self.augmented_steps = augmented_min_epochs, augmented_steps
        self.epochs: int | None = None

    def epochs_for(self, batches_per_epoch: int, augmented: bool = False) -> int:
        batches = max(1, batches_per_epoch)
        floor = self.min_epochs
        if augmented:
            floor = max(floor, min(self.augmented_min_epochs, math.ceil(self.augmented_steps / batches)))
        return int(min(self.max_epochs, max(floor, math.ceil(self.min_steps / batches))))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.datamodule is None:
            return
        datamodule = trainer.datamodule
        batches = len(datamodule.train_dataloader()) // max(1, trainer.accumulate_grad_batches)
        augment = getattr(datamodule, "augment", None)
        augmented = bool(getattr(augment, "needs_waveforms", False))
        self.epochs = self.epochs_for(batches, augmented)
        trainer.fit_loop.max_epochs = self.epochs
        why = " with waveform augmentation" if augmented and self.epochs == self.augmented_min_epochs else ""
        rank_zero_info(f"training budget: {self.epochs} epochs of {batches} steps{why} (--trainer.max_epochs sets it)")


ANNEALED_FRACTION = 0.75
"""Share of a run's planned optimiser steps after which early stopping may act: by then the one-cycle
(or cosine) schedule has brought the learning rate below a fifth of its peak."""


class AnnealedEarlyStopping(CachedStateKey, EarlyStopping):
    """Early stopping that cannot end a run before its learning rate has annealed.

    With a one-cycle schedule the model is still moving fast in the first three quarters of the
    run, and on new voices validation loss rises from overconfidence while accuracy still climbs
    (Speech Commands: the epoch-2 model by lowest validation loss scored 83.8 %, the last epoch
    87.3 %), so a stop there keeps an unfinished model. This callback only watches the monitored
    metric once ``annealed_fraction`` of the planned steps are done (from the start with
    ``--model.scheduler none``). ``monitor='auto'`` watches ``val/acc`` (higher is better) for
    classification and ``val/loss`` otherwise.
    """

    def __init__(
        self,
        monitor: str = "auto",
        min_delta: float = 0.0,
        patience: int = 5,
        verbose: bool = False,
        mode: Literal["auto", "min", "max"] = "auto",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        annealed_fraction: float = ANNEALED_FRACTION,
    ) -> None:
        if not 0 <= annealed_fraction <= 1:
            raise ValueError(f"early_stopping.annealed_fraction must be in [0, 1], got {annealed_fraction}")
        self.auto_monitor, self.auto_mode = monitor == "auto", mode == "auto"
        super().__init__(
            monitor="val/loss" if self.auto_monitor else monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode="min" if self.auto_mode else mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.annealed_fraction = annealed_fraction
        self.first_step = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        task = getattr(pl_module.hparams, "task", "classification")
        if self.auto_monitor:
            self.monitor = "val/acc" if task in ("classification", "frame_classification") else "val/loss"
        if self.auto_mode:
            self.mode = "max" if self.monitor.endswith(("acc", "f1")) else "min"
            self.min_delta = abs(self.min_delta) * (1 if self.monitor_op == torch.gt else -1)
            self.best_score = torch.tensor(-torch.inf if self.monitor_op == torch.gt else torch.inf)
        self.forget_state_key()  # the key names the monitor and mode just chosen
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        annealing = getattr(pl_module.hparams, "scheduler", "none") != "none"
        planned = trainer.estimated_stepping_batches
        self.first_step = int(self.annealed_fraction * planned) if annealing and math.isfinite(planned) else 0

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        if trainer.global_step < self.first_step:
            return
        super()._run_early_stopping_check(trainer)
