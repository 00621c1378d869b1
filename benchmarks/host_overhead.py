"""Host overhead of ``fit``'s training loop against a bare PyTorch loop, on a model too small to cost
anything (issue 31).

A 1-layer GRU of 8 units over 8 frames x 8 features in batches of 4 leaves almost nothing but the
per-step work on the host: Python in the training step, logging, metrics, callbacks, the progress
bar, synchronisations. That work is what keeps a fast GPU waiting, and here it can be seen on a CPU.

Both loops read the same batches from the same DataModule (``SequenceDataModule`` over a generated
``.npz``) and train the same network with the same loss, clipping, AdamW and one-cycle schedule.
``fit``'s loop is the Trainer ``speechrnn fit`` builds (its logger, checkpoint callbacks, progress
bar, metrics); only the steps are timed (after ``--warmup``), never validation or process start.
A third loop, "Lightning alone", is the floor Lightning itself sets: a Trainer with no logger,
callbacks, progress bar or checkpoints, over the same model whose ``training_step`` only returns the
loss (no metrics, no loss bookkeeping), with the same clipping, optimizer and schedule. What ``fit``
adds above it is speechrnn's; what it adds above the bare loop is Lightning's automatic optimisation.
Repeats alternate the loops; medians are reported. With ``--profile true`` one more ``fit`` run
is profiled (cProfile, which slows it) and its time per step is split by package and by function.

    python benchmarks/host_overhead.py [--steps 300] [--repeats 5] [--profile true]
    python benchmarks/host_overhead.py --device cuda --batch 1024 --frames 101 --features 39 \
        --hidden 128 --layers 2 --bidirectional true --classes 12 --steps 100 --warmup 20 --profile false

On a GPU both loops use the precision ``fit`` picks there (bf16 where supported), and the share of
the timed steps' wall time the GPU spends running kernels (torch.profiler) is printed for each.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import MethodType, SimpleNamespace
from unittest.mock import patch

import numpy as np
import pytorch_lightning as pl
import torch
from common import command_line, load_line, machine_lines, synchronize

from speechrnn.cli import SpeechRNNCLI
from speechrnn.data.corpora.sequences import save_npz
from speechrnn.data.splits import SPLITS


@dataclass(frozen=True)
class Settings:
    """The tiny model, its data and how much is timed."""

    steps: int = 300
    """Optimizer steps timed per repeat."""
    warmup: int = 30
    """Steps run before the timed ones."""
    repeats: int = 5
    """Repeats of each loop (alternating); medians are reported."""
    batch: int = 4
    frames: int = 8
    features: int = 8
    hidden: int = 8
    layers: int = 1
    bidirectional: bool = False
    classes: int = 4
    device: str = "cpu"
    """``cpu`` or ``cuda``."""
    profile: bool = True
    """Profile one more ``fit`` run and split its time per step by package and function."""
    top: int = 20
    """Functions listed in the profile."""
    options: tuple[str, ...] = ()
    """Extra ``speechrnn fit`` options for the fit loop (e.g. ``--trainer.log_every_n_steps=50``)."""


class GpuBusy:
    """The share of a stretch of wall time the GPU spends running kernels (torch.profiler's CUDA
    activity; None on a CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.profile = None
        if device.type == "cuda":
            from torch.profiler import ProfilerActivity, profile

            self.profile = profile(activities=[ProfilerActivity.CUDA])
        self.share: float | None = None

    def start(self) -> None:
        if self.profile is not None:
            self.profile.__enter__()

    def stop(self, wall_s: float) -> None:
        if self.profile is not None:
            self.profile.__exit__(None, None, None)
            kernels = [e for e in self.profile.events() if e.device_type.name == "CUDA"]
            self.share = sum(e.device_time for e in kernels) / 1e6 / wall_s


class StepTimer(pl.Callback):
    """Wall time of steps ``warmup`` to ``warmup + steps`` (optionally under cProfile), the GPU's busy
    share over them; the device is synchronised only at both ends."""

    def __init__(self, warmup: int, steps: int, profiler: cProfile.Profile | None = None) -> None:
        self.warmup, self.steps, self.profiler = warmup, steps, profiler
        self.start = self.end = 0.0
        self.busy: GpuBusy | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            synchronize(pl_module.device)
            self.busy = GpuBusy(pl_module.device)
            self.busy.start()
            if self.profiler is not None:
                self.profiler.enable()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup + self.steps - 1:
            synchronize(pl_module.device)
            self.end = time.perf_counter()
            if self.profiler is not None:
                self.profiler.disable()
            assert self.busy is not None
            self.busy.stop(self.end - self.start)


def write_corpus(settings: Settings, folder: Path) -> Path:
    """A seeded ``.npz`` whose training split is one epoch of ``warmup + steps`` batches (and more)."""
    rng = np.random.default_rng(0)
    train = settings.batch * (settings.warmup + settings.steps + 2)
    held = 4 * settings.batch
    count = train + 2 * held
    sequences = [rng.standard_normal((settings.frames, settings.features)).astype(np.float32) for _ in range(count)]
    labels = [str(i % settings.classes) for i in range(count)]
    splits = ["train"] * train + ["val"] * held + ["test"] * held
    return save_npz(folder / "tiny.npz", sequences, labels, splits=splits)


def fit_cli(settings: Settings, corpus: Path, root: Path) -> SpeechRNNCLI:
    """The Trainer, model and DataModule ``speechrnn fit`` builds for the tiny corpus (one epoch)."""
    args = [
        "--data", "SequenceDataModule", f"--data.path={corpus}", f"--data.batch_size={settings.batch}",
        f"--model.hidden_size={settings.hidden}", f"--model.num_layers={settings.layers}",
        f"--model.bidirectional={str(settings.bidirectional).lower()}", "--trainer.max_epochs=1",
        f"--trainer.accelerator={'gpu' if settings.device == 'cuda' else 'cpu'}", "--trainer.devices=1",
        f"--trainer.default_root_dir={root}", *settings.options,
    ]  # fmt: skip
    with patch.object(sys, "argv", sys.argv[:1]):  # this script's own options are not fit's
        cli = SpeechRNNCLI(args=args, run=False)
    cli.datamodule.required_splits = SPLITS
    return cli


Timing = tuple[float, float | None]
"""Microseconds per step, and the GPU's busy share over the timed steps (None on a CPU)."""


def time_fit(settings: Settings, corpus: Path, root: Path, profiler: cProfile.Profile | None = None) -> Timing:
    """``fit``'s loop."""
    cli = fit_cli(settings, corpus, root)
    timer = StepTimer(settings.warmup, settings.steps, profiler)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert timer.busy is not None
    return 1e6 * (timer.end - timer.start) / settings.steps, timer.busy.share


def loss_only_step(model: pl.LightningModule, batch, batch_idx: int) -> torch.Tensor:
    features, lengths, targets = batch[:3]
    return model.loss(model(features, lengths), targets, lengths)


def time_lightning_alone(settings: Settings, corpus: Path, root: Path) -> Timing:
    """Lightning's own floor: a bare Trainer (no logger, callbacks, progress bar, checkpoints or model
    summary) over the same model, data, precision and clipping, its ``training_step`` only the loss."""
    cli = fit_cli(settings, corpus, root)
    model = cli.model
    model.training_step = MethodType(loss_only_step, model)
    model.on_before_optimizer_step = MethodType(lambda self, optimizer: None, model)
    timer = StepTimer(settings.warmup, settings.steps)
    trainer = pl.Trainer(
        max_epochs=1, accelerator=cli.trainer.accelerator, devices=1, precision=cli.trainer.precision,
        gradient_clip_val=cli.trainer.gradient_clip_val, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], default_root_dir=root,
    )  # fmt: skip
    trainer.fit(model, datamodule=cli.datamodule)
    assert timer.busy is not None
    return 1e6 * (timer.end - timer.start) / settings.steps, timer.busy.share


AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def time_bare(settings: Settings, corpus: Path, root: Path) -> Timing:
    """A bare loop over the same DataModule, model, loss, clipping, optimizer, schedule and precision
    that ``fit`` configures (batches copied to the device as Lightning does, lengths left on the CPU)."""
    cli = fit_cli(settings, corpus, root)
    model, datamodule = cli.model, cli.datamodule
    device = torch.device(settings.device)
    model.to(device)
    dtype = AUTOCAST.get(str(cli.trainer.precision))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    model._trainer = SimpleNamespace(estimated_stepping_batches=len(loader))  # what configure_optimizers reads
    optimizers = model.configure_optimizers()
    model._trainer = None
    optimizer = optimizers["optimizer"] if isinstance(optimizers, dict) else optimizers
    scheduler = optimizers.get("lr_scheduler", {}).get("scheduler") if isinstance(optimizers, dict) else None
    clip = cli.trainer.gradient_clip_val
    model.train()
    start, busy = 0.0, GpuBusy(device)
    for index, batch in enumerate(loader):
        if index == settings.warmup:
            synchronize(device)
            busy.start()
            start = time.perf_counter()
        if index == settings.warmup + settings.steps:
            break
        features, lengths, targets = batch[:3]
        features, targets = features.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model.loss(model(features, lengths), targets, lengths)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
    synchronize(device)
    wall = time.perf_counter() - start
    busy.stop(wall)
    return 1e6 * wall / settings.steps, busy.share


def package_of(filename: str) -> str:
    """The package a profiled function belongs to (its top-level folder under site-packages)."""
    for marker in ("site-packages/", "speechrnn/"):
        if marker in filename:
            if marker == "speechrnn/":
                return "speechrnn"
            return filename.split(marker, 1)[1].split("/", 1)[0]
    return "python" if filename.startswith(("<", "~")) or "/lib/python" in filename else "other"


def print_profile(profiler: cProfile.Profile, steps: int, top: int) -> None:
    """Own time per step by package, then the functions with the most cumulative time per step."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    own: dict[str, float] = defaultdict(float)
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        own[package_of(filename)] += tottime
    total = sum(own.values())
    print(f"\nprofile of one fit run under cProfile: {1e6 * total / steps:.0f} us per step in all")
    for package, seconds in sorted(own.items(), key=lambda item: -item[1]):
        print(f"  {package:<22} {1e6 * seconds / steps:8.1f} us/step own time")
    print(f"\nfunctions by cumulative time per step (top {top}):")
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][3])[:top]  # type: ignore[attr-defined]
    for (filename, line, name), (_, calls, _, cumtime, _) in rows:
        where = f"{package_of(filename)}:{Path(filename).name}:{line}"
        print(f"  {1e6 * cumtime / steps:8.1f} us  {calls / steps:6.1f} calls/step  {name}  ({where})")


def main(settings: Settings) -> None:
    """Time the loops alternately, print medians, ratios to the bare loop and (optionally) the profile."""
    tiny = settings.hidden * settings.batch <= 64
    if tiny and settings.device == "cpu":
        torch.set_num_threads(1)  # the tiny model's arithmetic gains nothing from threads
    for line in machine_lines():
        print(line)
    cell = f"{'Bi' if settings.bidirectional else ''}GRU {settings.layers} x {settings.hidden}"
    print(f"model: {cell}, batches of {settings.batch} x {settings.frames} frames x {settings.features}; "
          f"{settings.steps} timed steps after {settings.warmup}; {settings.device}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        corpus = write_corpus(settings, Path(folder))
        runs: dict[str, list[Timing]] = {"bare loop": [], "Lightning alone": [], "fit's loop": []}
        for repeat in range(settings.repeats):
            runs["bare loop"].append(time_bare(settings, corpus, Path(folder) / f"bare{repeat}"))
            runs["Lightning alone"].append(time_lightning_alone(settings, corpus, Path(folder) / f"alone{repeat}"))
            runs["fit's loop"].append(time_fit(settings, corpus, Path(folder) / f"fit{repeat}"))
        medians = {}
        for name, timings in runs.items():
            medians[name] = statistics.median(us for us, _ in timings)
            rate = settings.batch * 1e6 / medians[name]
            shares = [share for _, share in timings if share is not None]
            busy = f", GPU busy {100 * statistics.median(shares):.0f} % of the timed steps" if shares else ""
            print(f"{name:<15} {medians[name]:9.1f} us/step, {rate:,.0f} samples/s{busy}  "
                  f"(runs: {', '.join(f'{us:.0f}' for us, _ in timings)})")  # fmt: skip
        bare = [us for us, _ in runs["bare loop"]]
        for name, label in (("Lightning alone", "Lightning alone / bare"), ("fit's loop", "fit / bare")):
            loop_us = medians[name]
            ratios = [us / base for (us, _), base in zip(runs[name], bare, strict=True)]
            print(f"{label} time per step: {loop_us / medians['bare loop']:.3f} (median of the repeats' own "
                  f"ratios {statistics.median(ratios):.3f}); host overhead {loop_us - medians['bare loop']:.0f} "
                  "us per step")  # fmt: skip
        if settings.profile:
            profiler = cProfile.Profile()
            time_fit(settings, corpus, Path(folder) / "profiled", profiler)
            print_profile(profiler, settings.steps, settings.top)
    print(load_line("end"))


if __name__ == "__main__":
    main(command_line(Settings, __doc__))
