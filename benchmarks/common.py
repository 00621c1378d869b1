"""What the benchmark scripts share: the machine description and the naive pipeline written the
usual way (librosa MFCC in ``Dataset.__getitem__``, padding collate, packed ``nn.GRU``)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime

import librosa
import soundfile as sf
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence
from torch.utils.data import Dataset

from speechrnn.features import FeatureSettings, librosa_mfcc
from speechrnn.padding import lengths_mask


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
