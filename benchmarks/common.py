"""What the benchmark scripts share: one command line, measurements in a child process of their
own, the machine description and the naive pipeline written the usual way (librosa MFCC in
``Dataset.__getitem__``, padding collate, packed ``nn.GRU``)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import librosa
import soundfile as sf
import torch
from pytorch_lightning import Callback
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence
from torch.utils.data import Dataset

from speechrnn.features import FeatureSettings, librosa_mfcc
from speechrnn.padding import lengths_mask


# --- the command line and the child processes --------------------------------------------------------
def command_line(component: Callable[..., Any] | type, doc: str | None) -> Any:
    """``component`` called with (a function) or built from (a dataclass) the command line's options
    (:func:`speechrnn.cli.run_script`)."""
    from speechrnn.cli import run_script

    return run_script(component, doc)


def run_in_child(function: Callable[[Any], dict], request: Any) -> dict:
    """``function(request)`` in a fresh Python process, so that its cold start and peak memory are
    its own. ``function`` is a module-level function of a benchmark script whose one parameter is a
    dataclass: ``request`` goes to the child as JSON on its standard input, the result (a dict)
    comes back as JSON in a temporary file."""
    script = Path(inspect.getfile(function)).resolve()
    with tempfile.TemporaryDirectory(prefix="bench-child-") as folder:
        result = Path(folder) / "result.json"
        code = (
            f"import sys; sys.path.insert(0, {str(script.parent)!r}); import common; "
            f"common.serve({script.stem!r}, {function.__name__!r}, {str(result)!r})"
        )
        payload = json.dumps(dataclasses.asdict(request))
        subprocess.run([sys.executable, "-c", code], input=payload, text=True, check=True)
        return json.loads(result.read_text())


def serve(module: str, function: str, result: str) -> None:
    """The child's side of :func:`run_in_child`: the request from standard input, rebuilt as the
    dataclass ``function`` takes, and the function's result written to ``result``."""
    target = getattr(importlib.import_module(module), function)
    parameter = next(iter(inspect.signature(target).parameters))
    request = from_json(typing.get_type_hints(target)[parameter], json.loads(sys.stdin.read()))
    Path(result).write_text(json.dumps(target(request)))


def from_json(kind: Any, value: Any) -> Any:
    """``value`` (decoded JSON) as ``kind``: a dataclass is rebuilt field by field, the rest is kept."""
    if not dataclasses.is_dataclass(kind):
        return value
    hints = typing.get_type_hints(kind)
    return kind(**{name: from_json(hints[name], item) for name, item in value.items()})


# --- the machine ------------------------------------------------------------------------------------
def machine_lines() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"machine: {cpu}, {os.cpu_count()} cores ({usable} usable), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), python {platform.python_version()}",
        f"date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"command: python {shlex.join(sys.argv)}",
        load_line("at start"),
    ]


def synchronize(device: torch.device) -> None:
    """Wait for a GPU's queued work (nothing on a CPU), so a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def folder_mib(path: str | Path) -> float:
    """Bytes of every file under ``path``, in MiB."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def load_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    noisy = "  (busy machine: timings are noisy)" if one > 1.5 else ""
    return f"load average {when}: {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min){noisy}"


# --- the naive pipeline -----------------------------------------------------------------------------
class LibrosaMFCCDataset(Dataset):
    """Reads and featurises each clip in ``__getitem__``."""

    def __init__(self, items: list[tuple[str, int]], settings: FeatureSettings) -> None:
        self.items = items
        self.settings = settings

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        waveform, rate = sf.read(path, dtype="float32")
        if waveform.ndim == 2:
            waveform = waveform.mean(axis=1)
        if rate != self.settings.rate:
            waveform = librosa.resample(waveform, orig_sr=rate, target_sr=self.settings.rate)
        return torch.from_numpy(librosa_mfcc(waveform, self.settings)), label


def pad_collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    features = [item[0] for item in batch]
    lengths = torch.tensor([len(f) for f in features])
    labels = torch.tensor([item[1] for item in batch])
    return pad_sequence(features, batch_first=True), lengths, labels


class PackedBiGRU(nn.Module):
    """``nn.GRU(bidirectional=True)`` over packed sequences, masked mean pooling, linear head."""

    def __init__(self, input_size: int, num_classes: int, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(features, lengths, batch_first=True, enforce_sorted=False)
        outputs, _ = self.gru(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=features.shape[1])
        mask = lengths_mask(lengths, features.shape[1], outputs.device).unsqueeze(-1)
        return self.head((outputs * mask).sum(1) / lengths.to(outputs.device)[:, None])


# --- timing the real fit ----------------------------------------------------------------------------
class FitTimer(Callback):
    """Times ``python -m speechrnn.fit`` from the outside, like the bare loops time themselves.

    A step runs from the end of the previous one (or the epoch's start) to the end of its optimizer
    step, so it includes waiting for data; an epoch runs from its start to the end of its
    validation. ``started`` is a ``time.perf_counter()`` reading taken before ``fit`` began, so the
    first epoch includes option parsing, the cache build and every warm-up. Written to ``path`` as
    JSON when training ends (before the test).
    """

    def __init__(self, path: str, started: float) -> None:
        self.path, self.started = path, started
        self.step_s: list[float] = []
        self.data_s: list[float] = []
        self.sizes: list[int] = []
        self.epoch_steps: list[int] = []
        self.epoch_s: list[float] = []
        self.validation_s: list[float] = []
        self.first_step_start: float | None = None
        self.first_epoch_end: float | None = None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.epoch_start = self.tick = time.perf_counter()
        self.epoch_steps.append(0)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self.first_step_start = self.first_step_start or now
        self.data_s.append(now - self.tick)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self.step_s.append(now - self.tick)
        self.sizes.append(len(batch[1]))
        self.epoch_steps[-1] += 1
        self.tick = now
        self.last_loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.validation_s.append(time.perf_counter() - self.validation_start)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        now = time.perf_counter()
        self.epoch_s.append(now - self.epoch_start)  # Lightning validates before this hook
        if self.first_epoch_end is None:
            self.first_epoch_end, self.first_epoch_with_val_end = self.tick, now

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        first_steps = self.epoch_steps[0] if len(self.epoch_s) else None
        with_val = None if self.first_epoch_end is None else self.first_epoch_with_val_end - self.started
        Path(self.path).write_text(json.dumps({
            "step_s": self.step_s, "data_s": self.data_s, "sizes": self.sizes,
            "epoch_s": self.epoch_s, "steps_per_epoch": self.epoch_steps, "validation_s": self.validation_s,
            "first_epoch_s": None if self.first_epoch_end is None else self.first_epoch_end - self.started,
            "first_epoch_steps": first_steps,
            "first_epoch_with_val_s": with_val,
            "setup_s": (self.first_step_start or time.perf_counter()) - self.started,
            "trained_s": time.perf_counter() - self.started,
            "final_loss": getattr(self, "last_loss", float("nan")),
        }))  # fmt: skip
