"""Small Lightning callbacks speechrnn adds to every run."""

from __future__ import annotations

import time

import pytorch_lightning as pl


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
