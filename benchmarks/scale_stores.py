"""The memory-mapped feature cache against LitData shards as the corpus grows (3k, 30k, 100k clips).

For each size of the synthetic corpus (generated once, not timed, into ``data/bench_synthetic_<clips>``):

1. memmap build: ``SyntheticCommandsDataModule.prepare_data()`` into a fresh cache folder (every
   clip read and featurised, ``--cache_workers`` processes);
2. LitData build: ``speechrnn.data.storage.shards.write_shards`` from that cache (what
   ``pipelines/build_cache.py --format litdata`` does after the features exist);
3. reading, each store in its own process: the training loader alone for ``--read_batches``
   batches after ``--warmup`` (samples/s), then ``--train_steps`` optimizer steps of the BiGRU of
   ``compare_pipelines.py`` (2 x 128, mean pooling, batch 64) after 5 warm-up steps (samples/s),
   and the process's peak resident memory.

Disk sizes are the folders' bytes. Peak RSS should stay flat as the corpus grows: the cache is
memory-mapped, the shards stream. At the end of reading, the resident memory is split into anonymous
(the process's own) and file-backed pages (for the memory map: the cache pages read so far, which the
kernel can drop at any time).

    python benchmarks/scale_stores.py                          # 3k, 30k, 100k clips
    python benchmarks/scale_stores.py --clips '[3000]' --train_steps 10
"""

from __future__ import annotations

import resource
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common import command_line, folder_mib, load_line, machine_lines, run_in_child

REPO = Path(__file__).resolve().parents[1]
SPEAKERS = 30


@dataclass
class Settings:
    """The corpus sizes, and how much of each store is timed.

    Attributes:
        clips: Corpus sizes: clips of the synthetic corpus (about), one measurement each.
        cache_workers: Processes building the memmap cache.
        warmup: Batches read before the reading rate is taken.
        read_batches: Batches timed when reading alone.
        train_steps: Optimizer steps timed per store.
    """

    clips: list[int] = field(default_factory=lambda: [3000, 30000, 100000])
    cache_workers: int = 2
    warmup: int = 20
    read_batches: int = 200
    train_steps: int = 30


@dataclass
class Stores:
    """One corpus size's folders: the synthetic corpus (and its repetitions), the memmap cache and
    the LitData shards."""

    root: str
    repetitions: int
    cache_dir: str
    shards: str


@dataclass
class Request:
    """What one child process measures: building both stores (``build``), or reading ``store``
    (``read``)."""

    settings: Settings
    stores: Stores
    store: Literal["memmap", "litdata"] = "memmap"


def corpus(clips: int) -> tuple[Path, int]:
    """The synthetic corpus of about ``clips`` clips (generated if missing) and its repetitions."""
    from speechrnn.data.corpora.synthetic.generator import (
        WORDS,
        SyntheticCorpusConfig,
        corpus_is_current,
        generate_corpus,
    )

    repetitions = max(1, round(clips / (SPEAKERS * len(WORDS))))
    root = REPO / "data" / f"bench_synthetic_{clips}"
    config = SyntheticCorpusConfig(num_speakers=SPEAKERS, repetitions=repetitions)
    if not corpus_is_current(root, config):
        tick = time.perf_counter()
        generate_corpus(root, config)
        print(f"generated {config.num_clips} clips in {time.perf_counter() - tick:.0f} s (not timed below)")
    return root, repetitions


def synthetic(stores: Stores, workers: int = 0):
    """The DataModule of the corpus, its memmap cache in ``stores.cache_dir``."""
    from speechrnn.data import SyntheticCommandsDataModule

    return SyntheticCommandsDataModule(
        root=stores.root,
        repetitions=stores.repetitions,
        cache_dir=stores.cache_dir,
        cache_workers=workers,
        batch_size=64,
        seed=0,
    )


# --- children: one measurement each, in a fresh process (common.run_in_child) ---------------------
def build(request: Request) -> dict:
    """Build the memmap cache from the audio, then the LitData shards from the cache, each timed."""
    from speechrnn.data.storage.shards import write_shards

    stores = request.stores
    tick = time.perf_counter()
    dm = synthetic(stores, request.settings.cache_workers)
    dm.prepare_data()
    memmap_s = time.perf_counter() - tick
    tick = time.perf_counter()
    write_shards(synthetic(stores), stores.shards)
    shards_s = time.perf_counter() - tick
    cache = next(p for p in Path(stores.cache_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
    return {
        "clips": int(len(dm.records)),
        "memmap_build_s": memmap_s,
        "litdata_build_s": shards_s,
        "memmap_mib": folder_mib(cache),
        "litdata_mib": folder_mib(Path(stores.shards)),
    }


def read(request: Request) -> dict:
    """Read ``request.store`` alone, then train on it; the rates and the process's memory."""
    import torch
    from torch import nn

    from speechrnn.models import SequenceClassifierNet

    settings = request.settings
    if request.store == "memmap":
        dm = synthetic(request.stores)
    else:
        from speechrnn.data.corpora.from_shards import ShardedDataModule

        dm = ShardedDataModule(path=request.stores.shards, batch_size=64, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()

    def batches():
        epoch = 0
        while True:
            if hasattr(loader, "batch_sampler") and hasattr(loader.batch_sampler, "set_epoch"):
                loader.batch_sampler.set_epoch(epoch)
            elif hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = batches()
    rates = []
    for step in range(settings.warmup + settings.read_batches):
        tick = time.perf_counter()
        batch = next(stream)
        if step >= settings.warmup:
            rates.append(len(batch[1]) / (time.perf_counter() - tick))
    model = SequenceClassifierNet(dm.feature_dim, dm.num_classes, "gru", 128, 2, True, pooling="mean")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train_rates = []
    for step in range(5 + settings.train_steps):
        tick = time.perf_counter()
        features, lengths, labels, *_ = next(stream)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(features, lengths), labels).backward()
        optimizer.step()
        if step >= 5:
            train_rates.append(len(labels) / (time.perf_counter() - tick))
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {
        "read_samples_s": statistics.median(rates),
        "train_samples_s": statistics.median(train_rates),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_anon_mib": int(status["RssAnon"].split()[0]) / 1024,
        "rss_file_mib": int(status["RssFile"].split()[0]) / 1024,
    }


# --- the parent --------------------------------------------------------------------------------------
def main(settings: Settings) -> None:
    """Per corpus size: build both stores, read each in a process of its own, then print the table."""
    print("\n".join(machine_lines()))
    rows = []
    for clips in settings.clips:
        root, repetitions = corpus(clips)
        work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{clips}-", dir=REPO / "data"))
        stores = Stores(str(root), repetitions, str(work / "cache"), str(work / "shards"))
        try:
            built = run_in_child(build, Request(settings, stores))
            print(f"{clips}: built {built}; {load_line('now')}", flush=True)
            for store in ("memmap", "litdata"):
                measured = run_in_child(read, Request(settings, stores, store))
                rows.append((built["clips"], store, built, measured))
                print(f"{clips} {store}: {measured}; {load_line('now')}", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        "| clips | store | build s | disk MiB | loader samples/s | training samples/s | peak RSS MiB "
        "| at end: anon + file-backed MiB |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for clips, store, built, measured in rows:
        build_s = built["memmap_build_s"] if store == "memmap" else built["litdata_build_s"]
        disk = built["memmap_mib"] if store == "memmap" else built["litdata_mib"]
        print(
            f"| {clips} | {store} | {build_s:.1f}{' (+ memmap)' if store == 'litdata' else ''} | {disk:.0f} "
            f"| {measured['read_samples_s']:.0f} | {measured['train_samples_s']:.1f} | {measured['peak_rss_mib']:.0f} "
            f"| {measured['rss_anon_mib']:.0f} + {measured['rss_file_mib']:.0f} |"
        )
    for store in ("memmap", "litdata"):
        mine = [(clips, measured) for clips, s, _, measured in rows if s == store]
        if len(mine) > 1:
            growth = mine[-1][1]["peak_rss_mib"] / mine[0][1]["peak_rss_mib"]
            anon = mine[-1][1]["rss_anon_mib"] / mine[0][1]["rss_anon_mib"]
            print(
                f"{store}: peak RSS {mine[-1][0]} clips / {mine[0][0]} clips = {growth:.2f}x (target <= 1.2x); "
                f"anonymous memory at the end {anon:.2f}x"
            )
    for clips in sorted({r[0] for r in rows}):
        pair = {s: m for c, s, _, m in rows if c == clips}
        if len(pair) == 2:
            print(
                f"{clips} clips: LitData / memmap training rate "
                f"{pair['litdata']['train_samples_s'] / pair['memmap']['train_samples_s']:.2f}x, loader rate "
                f"{pair['litdata']['read_samples_s'] / pair['memmap']['read_samples_s']:.2f}x (target >= 0.9x)"
            )
    print(load_line("at end"))


if __name__ == "__main__":
    main(command_line(Settings, __doc__))
