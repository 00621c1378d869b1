"""MFCC extraction throughput on FSDD, and what the feature cache saves in a training epoch.

On the same FSDD recordings in one run (40 MFCC, 40 mels, 25 ms / 10 ms windows at 8 kHz), clips
per second of:

(a) librosa per item: ``soundfile`` read + ``speechrnn.features.librosa_mfcc`` (the reference
    mapping); the first call (librosa import, numba compilation) is timed on its own;
(b) torchaudio per item: read + ``MFCCFrontend`` on each clip;
(c) torchaudio batched: read + ``MFCCFrontend`` on zero-padded batches of 64 with their lengths
    (each clip gets exactly its own features; checked on the first batch);
(d) the memory-mapped cache: built from scratch by ``FSDDDataModule`` in a temporary ``cache_dir``
    (timed), then ``store[i]`` for every clip (views, and copies that read the frames), and a full
    pass of the train DataLoader (bucketing, padding collate).

Then one training epoch (BiGRU 2 x 128, mean pooling, batch 64, AdamW, official train split =
recordings 5-49) from the cache (``FSDDDataModule.train_dataloader()`` + ``SequenceClassifierNet``,
exact padded path) against the naive way (librosa MFCC in ``Dataset.__getitem__``,
``DataLoader(num_workers=0)``, random batches, ``pack_padded_sequence`` + ``nn.GRU(bidirectional=True)``).
Each extraction figure is the median over ``--repeats`` passes; epoch times are medians over ``--epochs``.

    python benchmarks/feature_extraction.py                       # all 2,500 recordings
    python benchmarks/feature_extraction.py --limit 200 --epochs 1 --repeats 1    # smoke test (< 1 min)
"""

from __future__ import annotations

import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from common import LibrosaMFCCDataset, PackedBiGRU, command_line, load_line, machine_lines, pad_collate
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from speechrnn.data import FSDDDataModule
from speechrnn.data.corpora.fsdd import FILE_PATTERN
from speechrnn.data.corpora.locations import corpus_root
from speechrnn.features import FeatureSettings, MFCCFrontend, librosa_mfcc
from speechrnn.models import SequenceClassifierNet

FSDD_ROOT = corpus_root("fsdd", "recordings")
BATCH = 64


def select_files(root: Path, limit: int | None, seed: int) -> tuple[list[Path], Path, Path | None]:
    """The recordings used, and a folder holding exactly them (symlinks in a temp folder for --limit)."""
    files = sorted(p for p in root.iterdir() if FILE_PATTERN.match(p.name))
    if not limit or limit >= len(files):
        return files, root, None
    chosen = sorted(random.Random(seed).sample(files, limit))
    folder = Path(tempfile.mkdtemp(prefix="bench-fsdd-subset-"))
    for path in chosen:
        (folder / path.name).symlink_to(path.resolve())
    return [folder / p.name for p in chosen], folder, folder


def timed_passes(function: Callable[[], int], repeats: int) -> tuple[float, list[float]]:
    """Median clips/s over ``repeats`` calls of ``function`` (which returns the clips it handled)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        clips = function()
        rates.append(clips / (time.perf_counter() - start))
    return statistics.median(rates), rates


# --- the naive training pipeline, written out the usual way ------------------------------------------
def train_epochs(
    model: nn.Module, batches: Callable[[int], Iterable[tuple[torch.Tensor, ...]]], epochs: int
) -> tuple[list[float], list[float], int]:
    """Epoch times and the share of each spent waiting for batches; also the clips per epoch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    epoch_times, wait_shares, clips = [], [], 0
    for epoch in range(epochs):
        start = tick = time.perf_counter()
        waited, clips = 0.0, 0
        for features, lengths, labels in batches(epoch):
            waited += time.perf_counter() - tick
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(features, lengths), labels).backward()
            optimizer.step()
            clips += len(labels)
            tick = time.perf_counter()
        epoch_times.append(tick - start)
        wait_shares.append(waited / (tick - start))
    return epoch_times, wait_shares, clips


def main(
    root: Path = FSDD_ROOT, limit: int | None = None, repeats: int = 3, epochs: int = 1, seed: int = 0, threads: int = 0
) -> None:
    """Time every extraction method and both training epochs; print the tables.

    Args:
        root: FSDD recordings folder.
        limit: Use a seeded subset of this many recordings (default: all).
        repeats: Passes per extraction method (median reported).
        epochs: Training epochs per pipeline (median reported).
        seed: Seed of the subset, the models and the batches.
        threads: Torch intra-op threads (default 0: torch's default, one per core).
    """
    if threads:
        torch.set_num_threads(threads)

    print("\n".join(machine_lines()))
    files, folder, subset_dir = select_files(root, limit, seed)
    paths = [str(p) for p in files]
    settings = FeatureSettings().resolve(8000)
    print(
        f"data: {len(paths)} FSDD recordings from {root}; features: {settings.n_mfcc} MFCC, {settings.n_mels} "
        f"mels, {settings.win_ms:g} ms / {settings.hop_ms:g} ms at {settings.rate} Hz (n_fft {settings.n_fft}); "
        f"{repeats} pass(es) per method"
    )
    rows: list[tuple[str, float, str]] = []

    # soundfile alone, for reference (the first pass also warms the OS file cache for the others)
    def read_all() -> int:
        for path in paths:
            sf.read(path, dtype="float32")
        return len(paths)

    read_all()
    rate, _ = timed_passes(read_all, repeats)
    rows.append(("soundfile read only", rate, ""))

    # (a) librosa per item; the first call pays the import (unless a dependency imported it) and numba compilation
    already = "librosa" in sys.modules
    start = time.perf_counter()
    import librosa  # noqa: F401

    import_s = time.perf_counter() - start
    import_text = "already imported (Lightning -> torchmetrics imports it)" if already else f"import {import_s:.2f} s"
    waveform, _ = sf.read(paths[0], dtype="float32")
    start = time.perf_counter()
    librosa_mfcc(waveform, settings)
    first_call_s = time.perf_counter() - start
    print(f"librosa warm-up: {import_text}, first librosa_mfcc call {first_call_s:.2f} s (not in rates)")

    def librosa_per_item() -> int:
        for path in paths:
            librosa_mfcc(sf.read(path, dtype="float32")[0], settings)
        return len(paths)

    librosa_rate, _ = timed_passes(librosa_per_item, repeats)
    rows.append(("(a) librosa MFCC per item (read + features)", librosa_rate, ""))

    # (b) torchaudio per item
    frontend = MFCCFrontend(settings).eval()

    def torchaudio_per_item() -> int:
        with torch.inference_mode():
            for path in paths:
                audio = torch.from_numpy(sf.read(path, dtype="float32")[0])
                frontend(audio[None])[0][0].numpy()
        return len(paths)

    torchaudio_per_item()  # warm-up
    rate, _ = timed_passes(torchaudio_per_item, repeats)
    rows.append(("(b) torchaudio MFCCFrontend per item (read + features)", rate, ""))

    # (c) torchaudio on padded batches of 64 with lengths
    def torchaudio_batched(check: bool = False) -> int:
        with torch.inference_mode():
            for first in range(0, len(paths), BATCH):
                clips = [torch.from_numpy(sf.read(p, dtype="float32")[0]) for p in paths[first : first + BATCH]]
                lengths = torch.tensor([len(c) for c in clips])
                features, frames = frontend(pad_sequence(clips, batch_first=True), lengths)
                per_clip = [f[:n].numpy() for f, n in zip(features, frames.tolist(), strict=True)]
                if check and first == 0:
                    alone = [frontend(c[None])[0][0].numpy() for c in clips]
                    gap = max(float(np.abs(a - b).max()) for a, b in zip(per_clip, alone, strict=True))
                    print(f"batched vs per-item features on the first batch: max abs difference {gap:.2e}")
        return len(paths)

    torchaudio_batched(check=True)  # warm-up
    rate, _ = timed_passes(torchaudio_batched, repeats)
    rows.append((f"(c) torchaudio MFCCFrontend batched x{BATCH} (read + pad + features)", rate, ""))

    # (d) the memory-mapped feature cache
    cache_dir = tempfile.mkdtemp(prefix="bench-cache-")
    try:
        dm = FSDDDataModule(root=folder, val_fraction=0.0, cache_dir=cache_dir, batch_size=BATCH, seed=seed)
        start = time.perf_counter()
        dm.prepare_data()
        dm.setup("fit")
        build_s = time.perf_counter() - start
        rows.append(("(d) cache build from scratch (FSDDDataModule prepare_data + setup)", len(paths) / build_s, ""))
        store = dm.store
        assert store is not None

        def store_views() -> int:
            for index in range(len(store)):
                store[index]
            return len(store)

        def store_copies() -> int:
            for index in range(len(store)):
                np.array(store[index])
            return len(store)

        def loader_pass() -> int:
            return sum(len(batch[2]) for batch in dm.train_dataloader())

        for name, function in (
            ("(d) cache: store[i] for every clip (memmap views)", store_views),
            ("(d) cache: np.array(store[i]) for every clip (frames read)", store_copies),
            ("(d) cache: full pass of the train DataLoader (bucketing + collate)", loader_pass),
        ):
            rate, _ = timed_passes(function, repeats)
            rows.append((name, rate, ""))
        n_features = sum(len(store[i]) for i in range(len(store)))
        print(f"cache: {len(store)} clips, {n_features} frames, built in {build_s:.2f} s (OS file cache warm)")

        # training: one epoch from the cache vs the naive per-item librosa pipeline
        torch.manual_seed(seed)
        cached_model = SequenceClassifierNet(settings.feature_dim, 10, "gru", 128, 2, True, pooling="mean")
        cache_loader = dm.train_dataloader()

        def cache_batches(epoch: int) -> Iterable[tuple[torch.Tensor, ...]]:
            cache_loader.batch_sampler.set_epoch(epoch)
            return ((f, n, y) for f, n, y, _ in cache_loader)

        cache_times, cache_wait, train_clips = train_epochs(cached_model, cache_batches, epochs)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    train_items = [
        (str(p), int(m["digit"]))
        for p in files
        if (m := FILE_PATTERN.match(p.name)) is not None and int(m["index"]) >= 5
    ]
    torch.manual_seed(seed)
    naive_model = PackedBiGRU(settings.feature_dim, 10)
    naive_loader = DataLoader(
        LibrosaMFCCDataset(train_items, settings),
        batch_size=BATCH,
        shuffle=True,
        collate_fn=pad_collate,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
    naive_times, naive_wait, _ = train_epochs(naive_model, lambda epoch: naive_loader, epochs)
    if subset_dir is not None:
        shutil.rmtree(subset_dir, ignore_errors=True)

    print()
    print("| extraction | clips/s | x librosa per item |")
    print("|---|---:|---:|")
    for name, rate, _ in rows:
        print(f"| {name} | {rate:,.0f} | {rate / librosa_rate:,.1f} |")
    print()
    cache_epoch, naive_epoch = statistics.median(cache_times), statistics.median(naive_times)
    print(
        f"training: BiGRU 2 x 128, batch {BATCH}, AdamW lr 3e-3, {train_clips} clips of the official train split "
        f"per epoch, median of {epochs} epoch(s); cache built above ({build_s:.1f} s, not in the epoch)"
    )
    print("| training epoch | epoch s | clips/s | waiting for batches % | x naive |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| naive: librosa in __getitem__, num_workers=0, random batches, packed nn.GRU | {naive_epoch:.1f} "
        f"| {train_clips / naive_epoch:.1f} | {100 * statistics.median(naive_wait):.0f} | 1.00 |"
    )
    print(
        f"| speechrnn: feature cache, bucketed batches, SequenceClassifierNet (exact padded) | {cache_epoch:.1f} "
        f"| {train_clips / cache_epoch:.1f} | {100 * statistics.median(cache_wait):.0f} "
        f"| {naive_epoch / cache_epoch:.2f} |"
    )
    print(
        f"| speechrnn incl. building the cache | {cache_epoch + build_s:.1f} | "
        f"{train_clips / (cache_epoch + build_s):.1f} | | {naive_epoch / (cache_epoch + build_s):.2f} |"
    )
    print(load_line("at end"))


if __name__ == "__main__":
    command_line(main, __doc__)
