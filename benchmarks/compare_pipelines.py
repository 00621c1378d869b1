"""The usual librosa + DataLoader pipeline against speechrnn's feature cache and on-device features.

The same BiGRU (2 x 128 on 13 MFCCs with deltas and delta-deltas, mean pooling, batch 64, AdamW,
same learning rate, same seed, same number of optimizer steps) is trained three ways, each in its
own subprocess so peak resident memory (``ru_maxrss``) is its own (``common.run_in_child``: the
child reads one ``Request``, the pipeline's name and the settings, as JSON on its standard input):

(a) naive: librosa MFCC computed in ``Dataset.__getitem__`` (``speechrnn.features.librosa_mfcc``,
    the reference mapping, per-utterance normalisation), random batches from a plain ``DataLoader``
    (``num_workers`` 0 and 2; both are run and the comparison uses the better), packed sequences
    through ``torch.nn.GRU(bidirectional=True, num_layers=2)``, masked mean pooling, a linear head;
(b) speechrnn, feature cache: ``FSDDDataModule``/``SyntheticCommandsDataModule`` building its
    memory-mapped cache from scratch in a fresh temporary ``cache_dir``, length-bucketed batches,
    ``SequenceClassifierNet`` (exact padded path), a plain PyTorch loop over ``dm.train_dataloader()``;
(c) speechrnn, on-device features: ``on_device_features=True`` (a waveform cache), batches through
    ``dm.featurize(batch)`` (torchaudio MFCC per batch), otherwise as (b).

(f) the real fit: ``speechrnn.fit.main`` (what ``python -m speechrnn.fit`` runs) in its own process on
    the same corpus, model, batch size, learning rate (constant, as the bare loops), seed and
    number of optimizer steps, doing (b)'s work: cached features and no augmentation
    (``--data.on_device_features false --data.augment '{}'``; left to itself, ``fit`` chooses waveform
    augmentation for a corpus as small as FSDD, which recomputes the front end every step, and a
    DataModule used by hand, as (b) uses it, augments nothing), with its cache built from scratch
    and everything users get:
    LightningCLI parsing, the Trainer, validation every epoch (a seeded ``val_fraction`` of the
    training split, so it trains on fewer clips), checkpoints, logs, then its test of the best
    checkpoint. Timed from the outside by ``common.FitTimer``; its per-epoch rate counts the
    validation pass, the bare loops have none.

Two more on request (``--pipelines``): (r) is (b) without bucketing, (g) is (b) with PyTorch's
``nn.GRU`` instead of the fused CPU GRU (``encoder.fused = "off"``), to separate the gains.
``--pipelines`` takes names or their letters: ``'[naive, cache, on_device, fit]'`` is ``abcf``, the
default; ``unbucketed`` is (r), ``nn_gru`` (g). The table ``PIPELINES`` below describes each.

Printed per pipeline: samples/s once warm (median over per-step rates after the first epoch, or
after ``--warmup_steps`` when the run is shorter than two epochs), time of the first epoch from a
cold start (cache building and warm-ups included, the libraries each pipeline uses imported before
the clock starts, ``speechrnn.fit`` for (f) as librosa for (a); extrapolated, marked ``*``, when
fewer steps than an epoch are run), the ratios to (a), test accuracy (argmax) after the same steps, peak RSS.

    python benchmarks/compare_pipelines.py                                  # FSDD, official split
    python benchmarks/compare_pipelines.py --corpus synthetic --clips 10000 --steps 24
    python benchmarks/compare_pipelines.py --limit 200 --steps 10           # smoke test (< 1 min)
    python benchmarks/compare_pipelines.py --device cuda --precision bf16   # on a GPU (also: 16)
    python benchmarks/compare_pipelines.py --pipelines abcg                 # or '[naive, cache, on_device, nn_gru]'
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import resource
import shlex
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import librosa  # noqa: F401  (imported up front like torch and Lightning: only its first call is warm-up)
import torch
from common import (
    LibrosaMFCCDataset,
    PackedBiGRU,
    command_line,
    folder_mib,
    load_line,
    machine_lines,
    pad_collate,
    run_in_child,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset

from speechrnn.data.corpora.fsdd import FILE_PATTERN
from speechrnn.data.corpora.locations import corpus_root
from speechrnn.features import FeatureSettings

REPO = Path(__file__).resolve().parents[1]
FSDD_ROOT = corpus_root("fsdd", "recordings")
SYNTHETIC_SPEAKERS = 30
HIDDEN = 128
LAYERS = 2


@dataclass(frozen=True)
class Spec:
    """One pipeline: its letter (the short name benchmarks/README.md's tables use), its name, what it
    is, and how it is built: ``naive`` (librosa in ``__getitem__``, packed ``nn.GRU``),
    ``datamodule`` (a speechrnn DataModule and ``SequenceClassifierNet`` in a plain loop, with the
    options below) or ``fit`` (``speechrnn.fit.main``)."""

    letter: str
    name: str
    what: str
    build: Literal["naive", "datamodule", "fit"]
    on_device: bool = False
    bucketing: bool = True
    fused: Literal["auto", "off"] = "auto"

    @property
    def title(self) -> str:
        """The pipeline's row in the table: its letter and what it is."""
        return f"({self.letter}) {self.what}"


PIPELINES = (
    Spec("a", "naive", "naive: librosa in __getitem__, packed nn.GRU", "naive"),
    Spec("b", "cache", "speechrnn: feature cache, bucketing", "datamodule"),
    Spec("c", "on_device", "speechrnn: on-device features", "datamodule", on_device=True),
    Spec("f", "fit", "speechrnn: the real fit (python -m speechrnn.fit)", "fit"),
    Spec("r", "unbucketed", "speechrnn: feature cache, no bucketing (random batches)", "datamodule", bucketing=False),
    Spec("g", "nn_gru", "speechrnn: as (b), with nn.GRU instead of the fused CPU GRU", "datamodule", fused="off"),
)
"""Every pipeline, in the order they run and appear in the table."""


@dataclass
class Settings:
    """What every pipeline shares, and which pipelines run.

    Attributes:
        corpus: fsdd (the official split) or synthetic (the embedded corpus, generated once).
        root: FSDD recordings (default: $SPEECHRNN_DATA/fsdd/recordings) or the synthetic corpus folder
            (default: data/bench_synthetic_<clips>).
        clips: Synthetic corpus size (about: rounded to words x 30 speakers x repetitions).
        limit: FSDD only: use a seeded subset of this many recordings.
        steps: Optimizer steps per pipeline (default: 3 epochs for FSDD, min(2 epochs, 24) for synthetic).
        warmup_steps: Steps left out of the warm rate when the run is shorter than an epoch + 5 steps.
        batch: Batch size of every pipeline.
        device: Where every pipeline trains: cpu, cuda, cuda:1, ...
        precision: Autocast dtype (bf16 or 16 on a GPU; 32 on a CPU).
        bucket_batches: (b)/(c): batches per length-sorting window (default 0: the DataModule's).
        lr: AdamW's learning rate (constant) in every pipeline.
        seed: Seed of the subset, the model, the batches and the fit.
        threads: Torch intra-op threads (default 0: torch's default, one per core).
        naive_workers: DataLoader num_workers values tried for (a), each a run of its own.
        pipelines: Pipelines to run, by name or letter (a list, or one run of letters such as abcg):
            naive (a), cache (b), on_device (c), fit (f: the real fit), unbucketed (r: (b) without
            bucketing), nn_gru (g: (b) with nn.GRU).
        fit_args: (f): extra speechrnn.fit options, e.g. '--model.fused off'.
    """

    corpus: Literal["fsdd", "synthetic"] = "fsdd"
    root: str | None = None
    clips: int = 3000
    limit: int | None = None
    steps: int | None = None
    warmup_steps: int = 5
    batch: int = 64
    device: str = "cpu"
    precision: Literal["32", "bf16", "16"] = "32"
    bucket_batches: int = 0
    lr: float = 3e-3
    seed: int = 0
    threads: int = 0
    naive_workers: list[int] = field(default_factory=lambda: [0, 2])
    pipelines: list[str] | str = field(default_factory=lambda: ["naive", "cache", "on_device", "fit"])
    fit_args: str = ""

    @property
    def repetitions(self) -> int:
        """Repetitions of every word by every speaker in the synthetic corpus of about ``clips`` clips."""
        return synthetic_repetitions(self.clips)


@dataclass
class Request:
    """What one child process runs: the pipeline named ``pipeline`` with ``settings`` (its corpus
    prepared, its steps decided), and ``workers`` DataLoader processes for (a)."""

    pipeline: str
    workers: int
    settings: Settings


def selected(choice: list[str] | str) -> list[Spec]:
    """The pipelines ``choice`` names (names or letters, or one run of letters), in the table's order."""
    by_key = {key: spec for spec in PIPELINES for key in (spec.letter, spec.name)}
    words = [choice] if isinstance(choice, str) else choice
    keys = [key for word in words for key in ([word] if word in by_key else list(word))]
    unknown = [key for key in keys if key not in by_key]
    if unknown:
        names = ", ".join(f"{spec.name} ({spec.letter})" for spec in PIPELINES)
        raise SystemExit(f"--pipelines: no pipeline {', '.join(map(repr, unknown))}; there are {names}")
    wanted = {by_key[key].name for key in keys}
    return [spec for spec in PIPELINES if spec.name in wanted]


# --- shared reporting --------------------------------------------------------------------------------
def memory_report(baseline_mib: float) -> dict[str, float]:
    """Peak RSS of this process (and of its largest reaped child, e.g. a DataLoader worker) in MiB."""
    status = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                status[key] = int(value.split()[0]) / 1024
    return {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "baseline_rss_mib": baseline_mib,
        "end_rss_anon_mib": status.get("RssAnon", float("nan")),
        "end_rss_file_mib": status.get("RssFile", float("nan")),
    }


def current_rss_mib() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmRSS"))


# --- corpora -----------------------------------------------------------------------------------------
def fsdd_items(root: Path) -> list[tuple[str, int, str]]:
    """``(path, digit, split)`` of every recording; the official split: index 0-4 test, 5-49 train."""
    items = []
    for path in sorted(root.iterdir()):
        match = FILE_PATTERN.match(path.name)
        if match:
            split = "test" if int(match["index"]) < 5 else "train"
            items.append((str(path), int(match["digit"]), split))
    return items


def synthetic_items(root: Path) -> list[tuple[str, int, str]]:
    with open(root / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    classes = sorted({row["label"] for row in rows})
    return [(str(root / row["path"]), classes.index(row["label"]), row["split"]) for row in rows]


def corpus_items(settings: Settings) -> list[tuple[str, int, str]]:
    """``(path, label, split)`` of every clip of the prepared corpus."""
    return fsdd_items(Path(settings.root)) if settings.corpus == "fsdd" else synthetic_items(Path(settings.root))


def synthetic_repetitions(clips: int) -> int:
    from speechrnn.data.corpora.synthetic.generator import WORDS

    return max(1, round(clips / (SYNTHETIC_SPEAKERS * len(WORDS))))


def limited_fsdd_root(source: Path, limit: int, seed: int) -> Path:
    """A temporary folder of symlinks to a seeded subset of ``limit`` recordings (for smoke runs)."""
    files = sorted(p for p in source.iterdir() if FILE_PATTERN.match(p.name))
    chosen = sorted(random.Random(seed).sample(files, min(limit, len(files))))
    folder = Path(tempfile.mkdtemp(prefix="bench-fsdd-subset-"))
    for path in chosen:
        (folder / path.name).symlink_to(path.resolve())
    return folder


# --- the training loop shared by every pipeline ------------------------------------------------------
Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]


AUTOCAST = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def to_device(features: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Features and labels on ``device``; lengths are left on the CPU (packing needs them there)."""
    return features.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def train(
    model: nn.Module,
    batches: Batches,
    steps: int,
    epoch_steps: int,
    lr: float,
    started: float,
    device: torch.device = torch.device("cpu"),
    precision: str = "32",
) -> dict:
    """Plain loop for ``steps`` optimizer steps over epochs of ``batches(epoch)``; per-step timings.

    A step's time runs from the end of the previous step (or the epoch's start, which includes
    DataLoader worker start-up) to the end of its optimizer step, so it includes waiting for data.
    On a GPU each step ends with a synchronisation, so its time is the GPU's, not the launch's;
    ``precision`` "bf16" or "16" trains under autocast (with gradient scaling for float16).
    """
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")
    dtype = AUTOCAST[precision]
    model.train()
    times, data_times, sizes = [], [], []
    first_epoch_s, first_epoch_steps, epoch = None, None, 0
    while len(times) < steps:
        tick = time.perf_counter()
        for features, lengths, labels in batches(epoch):
            features, labels = to_device(features, labels, device)
            fetched = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(model(features, lengths).float(), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            done = time.perf_counter()
            times.append(done - tick)
            data_times.append(fetched - tick)
            sizes.append(len(labels))
            tick = done
            if epoch == 0 and len(times) == epoch_steps:
                first_epoch_s, first_epoch_steps = done - started, epoch_steps
            if len(times) >= steps:
                break
        epoch += 1
        if len(times) == 0:
            raise RuntimeError("the training split gave no batches")
    return {
        "step_s": times,
        "data_s": data_times,
        "sizes": sizes,
        "first_epoch_s": first_epoch_s,
        "first_epoch_steps": first_epoch_steps,
        "trained_s": time.perf_counter() - started,
        "final_loss": loss.item(),
    }


@torch.inference_mode()
def accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    device: torch.device = torch.device("cpu"),
) -> float:
    model.eval()
    correct = total = 0
    for features, lengths, labels in batches:
        features, labels = to_device(features, labels, device)
        correct += int((model(features, lengths).argmax(1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)


def speechrnn_datamodule(settings: Settings, spec: Spec, cache_dir: str):
    """The DataModule of a ``datamodule`` pipeline, its cache in ``cache_dir``."""
    if settings.corpus == "fsdd":
        from speechrnn.data import FSDDDataModule

        # val_fraction=0: train on the whole official train split (recordings 5-49), as (a) does.
        return FSDDDataModule(
            root=settings.root,
            val_fraction=0.0,
            cache_dir=cache_dir,
            on_device_features=spec.on_device,
            bucketing=spec.bucketing,
            batch_size=settings.batch,
            seed=settings.seed,
        )
    from speechrnn.data import SyntheticCommandsDataModule

    return SyntheticCommandsDataModule(
        root=settings.root,
        repetitions=settings.repetitions,
        cache_dir=cache_dir,
        on_device_features=spec.on_device,
        bucketing=spec.bucketing,
        batch_size=settings.batch,
        seed=settings.seed,
    )


def fit_arguments(settings: Settings, cache_dir: str, runs_dir: str, timer: dict) -> list[str]:
    """``speechrnn.fit`` options for the same data, model, optimiser and steps as (b)."""
    if settings.corpus == "fsdd":
        data = ["--data", "FSDDDataModule", "--data.root", settings.root]
    else:
        data = ["--data", "SyntheticCommandsDataModule", "--data.root", settings.root,
                "--data.repetitions", str(settings.repetitions)]  # fmt: skip
    accelerator = "cpu" if settings.device == "cpu" else "gpu"
    precision = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}[settings.precision]
    return [
        *data, "--data.cache_dir", cache_dir, "--data.batch_size", str(settings.batch),
        "--data.on_device_features", "false", "--data.augment", "{}",
        "--data.seed", str(settings.seed),
        "--model.cell", "gru", "--model.hidden_size", str(HIDDEN), "--model.num_layers", str(LAYERS),
        "--model.bidirectional", "true", "--model.pooling", "mean", "--model.dropout", "0",
        "--model.lr", str(settings.lr), "--model.scheduler", "none",
        "--trainer.max_steps", str(settings.steps), "--trainer.max_epochs", "1000",
        "--trainer.accelerator", accelerator, "--trainer.devices", "1", "--trainer.precision", precision,
        "--trainer.default_root_dir", runs_dir, "--seed_everything", str(settings.seed),
        "--trainer.callbacks+", json.dumps({"class_path": "common.FitTimer", "init_args": timer}),
        *shlex.split(settings.fit_args),
    ]  # fmt: skip


def run_fit(settings: Settings, result: dict, baseline: float, started: float) -> dict:
    """(f): ``speechrnn.fit.main`` as users run it, timed by ``common.FitTimer``."""
    from speechrnn.fit import main as fit

    cache_dir = tempfile.mkdtemp(prefix="bench-cache-f-")
    runs_dir = tempfile.mkdtemp(prefix="bench-runs-f-")
    timer_file = os.path.join(runs_dir, "timer.json")
    metrics = fit(fit_arguments(settings, cache_dir, runs_dir, {"path": timer_file, "started": started}))
    result.update(memory_report(baseline))
    timed = json.loads(Path(timer_file).read_text())
    result.update(timed)
    result["test_accuracy"] = metrics["test/acc"]
    result["eval_s"] = time.perf_counter() - started - timed["trained_s"]
    result["epoch_steps"] = timed["steps_per_epoch"][0]
    result["n_train"] = sum(timed["sizes"][: timed["steps_per_epoch"][0]])
    result["cache_mib"] = folder_mib(cache_dir)
    shutil.rmtree(cache_dir, ignore_errors=True)
    shutil.rmtree(runs_dir, ignore_errors=True)
    return result


def run_pipeline(request: Request) -> dict:
    """One pipeline, cold, in a child process (``common.run_in_child``): everything from building
    its data to the last step is timed."""
    spec = next(spec for spec in PIPELINES if spec.name == request.pipeline)
    settings = request.settings
    if settings.threads:
        torch.set_num_threads(settings.threads)
    features = FeatureSettings().resolve(8000 if settings.corpus == "fsdd" else 16000)
    items = corpus_items(settings)
    num_classes = len({label for _, label, _ in items})
    n_train = sum(1 for item in items if item[2] == "train")
    if spec.build == "fit":
        import speechrnn.fit  # noqa: F401  (up front, like every other pipeline's libraries: 0.19 s here)
    baseline = current_rss_mib()
    torch.manual_seed(settings.seed)
    epoch_steps = math.ceil(n_train / settings.batch)
    result: dict = {"pipeline": spec.letter, "n_train": n_train, "epoch_steps": epoch_steps}
    cache_dir = None
    device = torch.device(settings.device)
    started = time.perf_counter()
    if spec.build == "fit":
        return run_fit(settings, result, baseline, started)
    if spec.build == "naive":
        model: nn.Module = PackedBiGRU(features.feature_dim, num_classes)
        train_set = LibrosaMFCCDataset([(p, y) for p, y, s in items if s == "train"], features)
        test_set = LibrosaMFCCDataset([(p, y) for p, y, s in items if s == "test"], features)

        def loader(dataset: Dataset, shuffle: bool) -> DataLoader:
            return DataLoader(
                dataset,
                batch_size=settings.batch,
                shuffle=shuffle,
                collate_fn=pad_collate,
                num_workers=request.workers,
                pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(settings.seed),
            )

        train_loader = loader(train_set, True)
        result["setup_s"] = time.perf_counter() - started
        stats = train(model, lambda epoch: train_loader, settings.steps, epoch_steps, settings.lr, started, device,
                      settings.precision)  # fmt: skip
        test_batches: Iterable = loader(test_set, False)
        result["workers"] = request.workers
    else:
        cache_dir = tempfile.mkdtemp(prefix=f"bench-cache-{spec.letter}-")
        dm = speechrnn_datamodule(settings, spec, cache_dir)
        if settings.bucket_batches:
            dm.bucket_size_multiplier = settings.bucket_batches
        dm.prepare_data()  # builds the cache from scratch (fresh cache_dir)
        dm.setup("fit")
        result["setup_s"] = time.perf_counter() - started
        from speechrnn.models import SequenceClassifierNet

        model = SequenceClassifierNet(dm.feature_dim, dm.num_classes, "gru", HIDDEN, LAYERS, True, pooling="mean")
        model.encoder.fused = spec.fused
        train_loader = dm.train_dataloader()

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            train_loader.batch_sampler.set_epoch(epoch)  # as Lightning does each epoch
            for features, lengths, labels, indices in train_loader:
                # as the Trainer does: tensors to the device (lengths stay on the CPU), then featurize
                features, labels = to_device(features, labels, device)
                features, lengths, labels, _ = dm.featurize((features, lengths, labels, indices), training=True)
                yield features, lengths, labels

        def test_iter() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            for features, lengths, labels, indices in dm.test_dataloader():
                features, labels = to_device(features, labels, device)
                features, lengths, labels, _ = dm.featurize((features, lengths, labels, indices))
                yield features, lengths, labels

        stats = train(model, batches, settings.steps, epoch_steps, settings.lr, started, device, settings.precision)
        test_batches = test_iter()
        result["cache_mib"] = folder_mib(cache_dir)
    result.update(memory_report(baseline))  # after training, before evaluation
    tick = time.perf_counter()
    result["test_accuracy"] = accuracy(model, test_batches, device)
    result["eval_s"] = time.perf_counter() - tick
    result.update(stats)
    if cache_dir is not None:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return result


# --- the parent: corpus, subprocesses, table ---------------------------------------------------------
def summarise(result: dict, warmup_steps: int) -> dict:
    times, sizes, data = result["step_s"], result["sizes"], result["data_s"]
    first = result["first_epoch_steps"]
    start = first if first is not None and len(times) - first >= 5 else min(warmup_steps, len(times) - 1)
    warm_times, warm_sizes = times[start:], sizes[start:]
    warm = {
        "warm_from_step": start,
        "warm_median": statistics.median(s / t for s, t in zip(warm_sizes, warm_times, strict=True)),
        "warm_aggregate": sum(warm_sizes) / sum(warm_times),
        "data_share": sum(data[start:]) / sum(warm_times),
    }
    if result["first_epoch_s"] is not None:
        warm["first_epoch"], warm["estimated"] = result["first_epoch_s"], False
    else:  # fewer steps than an epoch: what ran, plus the missing steps at the warm mean step time
        mean_step = sum(warm_times) / len(warm_times)
        warm["first_epoch"] = result["trained_s"] + (result["epoch_steps"] - len(times)) * mean_step
        warm["estimated"] = True
    return warm


def prepare_corpus(settings: Settings) -> tuple[Settings, Path | None]:
    """FSDD: the folder (or a seeded subset for --limit); synthetic: generate, timed on its own.
    Returns the settings with the corpus's folder, and the subset's folder to remove at the end."""
    if settings.corpus == "fsdd":
        source = Path(settings.root or FSDD_ROOT)
        if not source.is_dir():
            raise SystemExit(f"{source}: no FSDD recordings there; give --root or set SPEECHRNN_DATA")
        subset = limited_fsdd_root(source, settings.limit, settings.seed) if settings.limit else None
        return replace(settings, root=str(subset or source)), subset
    from speechrnn.data.corpora.synthetic.generator import SyntheticCorpusConfig, corpus_is_current, generate_corpus

    root = settings.root or str(REPO / "data" / f"bench_synthetic_{settings.clips}")
    config = SyntheticCorpusConfig(num_speakers=SYNTHETIC_SPEAKERS, repetitions=settings.repetitions)
    if corpus_is_current(root, config):
        print(f"synthetic corpus: {config.num_clips} clips already in {root} (not regenerated)")
    else:
        tick = time.perf_counter()
        generate_corpus(root, config)
        seconds = time.perf_counter() - tick
        words = config.num_clips // (SYNTHETIC_SPEAKERS * settings.repetitions)
        print(
            f"synthetic corpus: generated {config.num_clips} clips ({settings.repetitions} repetitions x "
            f"{SYNTHETIC_SPEAKERS} speakers x {words} words) in {seconds:.1f} s into {root} "
            "(not in the pipelines' times)"
        )
    return replace(settings, root=root), None


def print_table(rows: list[tuple[str, dict, dict]]) -> None:
    naive = [(r, s) for name, r, s in rows if name.startswith("(a)")]
    best_warm = max(s["warm_median"] for _, s in naive) if naive else float("nan")
    best_first = min(s["first_epoch"] for _, s in naive) if naive else float("nan")
    print()
    print(
        "| pipeline | samples/s warm (median step) | samples/s warm (aggregate) | first epoch s (cold) "
        "| warm x (a) | first epoch x (a) | test acc | peak RSS MiB | setup s | data wait % |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, result, summary in rows:
        star = "*" if summary["estimated"] else ""
        peak = result["peak_rss_mib"]
        children = result["children_peak_rss_mib"]
        peak_text = f"{peak:.0f}" + (f" (+worker {children:.0f})" if result.get("workers") else "")
        print(
            f"| {name} | {summary['warm_median']:.1f} | {summary['warm_aggregate']:.1f} "
            f"| {summary['first_epoch']:.1f}{star} | {summary['warm_median'] / best_warm:.2f} "
            f"| {best_first / summary['first_epoch']:.2f} | {result['test_accuracy']:.3f} | {peak_text} "
            f"| {result['setup_s']:.1f} | {100 * summary['data_share']:.0f} |"
        )
    print()
    print("x (a): speed-up over the better naive run (highest warm rate; shortest first epoch).")
    print(
        "first epoch: from a cold start (dataset creation / cache build from scratch) to the end of the first "
        "epoch's last step; * = fewer steps than an epoch were run, the rest estimated at the warm step time."
    )
    print(
        "setup s: time before the first step (cache build + setup for (b)/(c)). data wait %: share of warm step "
        "time spent waiting for the batch (loading, collate, featurize)."
    )
    for name, result, _ in rows:
        extra = f", cache {result['cache_mib']:.0f} MiB on disk" if "cache_mib" in result else ""
        print(
            f"  {name}: RSS after imports {result['baseline_rss_mib']:.0f} MiB, at end anon "
            f"{result['end_rss_anon_mib']:.0f} + file-backed {result['end_rss_file_mib']:.0f} MiB{extra}; "
            f"final loss {result['final_loss']:.3f}; eval {result['eval_s']:.1f} s"
        )


def fit_line(fitted: dict, bare: dict, bare_result: dict, n_test: int, naive: list[dict]) -> str:
    """(f) against (b) per epoch and against (a) over the first epoch from a cold start.

    (b) runs no validation, so (f)'s epochs are compared with (b)'s training rate alone, without
    (f)'s validation pass, and with (b) charged the validation (f) ran: as many clips as (f) held
    out, at (b)'s own measured evaluation cost per test clip."""
    ends = [sum(fitted["steps_per_epoch"][: i + 1]) for i in range(len(fitted["epoch_s"]))]
    samples = [
        sum(fitted["sizes"][end - steps : end]) for end, steps in zip(ends, fitted["steps_per_epoch"], strict=False)
    ]
    full = fitted["steps_per_epoch"][0]
    rates = [
        n / seconds
        for n, seconds, steps in zip(samples, fitted["epoch_s"], fitted["steps_per_epoch"], strict=False)
        if steps == full  # max_steps can end the last epoch early
    ]
    warm = rates[1:] or rates
    validation = fitted.get("validation_s", [])
    training = [
        n / (seconds - checked)
        for n, seconds, checked, steps in zip(
            samples, fitted["epoch_s"], validation, fitted["steps_per_epoch"], strict=False
        )
        if steps == full
    ][1:]
    line = (
        f"(f) per epoch, validation included: {statistics.median(warm):.1f} samples/s (median of epochs "
        f"{'2' if len(rates) > 1 else '1'}..{len(rates)}: {', '.join(f'{r:.0f}' for r in rates)}) = "
        f"{statistics.median(warm) / bare['warm_aggregate']:.2f}x (b)'s warm aggregate rate (target >= 0.95x)"
    )
    if training and validation:
        line += (
            f"; without its validation pass (median {statistics.median(validation):.2f} s an epoch) "
            f"{statistics.median(training):.1f} samples/s = {statistics.median(training) / bare['warm_aggregate']:.2f}x"
        )
    held_out = bare_result["n_train"] - samples[0]
    if held_out > 0 and n_test:
        epoch = samples[0] / bare["warm_aggregate"] + held_out * bare_result["eval_s"] / n_test
        line += (
            f"; (b) with the same validation ({held_out} clips at its evaluation cost) "
            f"{samples[0] / epoch:.1f} samples/s, (f) = {statistics.median(warm) * epoch / samples[0]:.2f}x of it"
        )
    if naive and fitted.get("first_epoch_s"):
        best = min(s["first_epoch"] for s in naive)
        line += (
            f"; first epoch from a cold start {fitted['first_epoch_s']:.1f} s ({fitted['first_epoch_with_val_s']:.1f} "
            f"s with its validation) = {best / fitted['first_epoch_s']:.2f}x (a) (target >= 3x)"
        )
    return line


def main(settings: Settings) -> None:
    """Prepare the corpus, run each selected pipeline in a process of its own, print the table."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    specs = selected(settings.pipelines)
    print("\n".join(machine_lines()))
    settings, subset = prepare_corpus(settings)
    items = corpus_items(settings)
    n_train = sum(1 for item in items if item[2] == "train")
    epoch_steps = math.ceil(n_train / settings.batch)
    if settings.steps is None:
        # FSDD: 3 epochs, where every pipeline has settled (after 2, the cache pipelines are still behind).
        steps = 3 * epoch_steps if settings.corpus == "fsdd" else min(2 * epoch_steps, 24)
        settings = replace(settings, steps=steps)
    n_test = sum(1 for item in items if item[2] == "test")
    print(f"corpus: {settings.corpus}, {len(items)} clips ({n_train} train, {n_test} test) in {settings.root}")
    print(
        f"model: BiGRU {LAYERS} x {HIDDEN} on 40 MFCCs, mean pooling; batch {settings.batch}, AdamW lr {settings.lr}, "
        f"device {settings.device}, precision {settings.precision}, "
        f"seed {settings.seed}; {settings.steps} steps per pipeline ({settings.steps / epoch_steps:.2f} epochs of "
        f"{epoch_steps} steps); (b)/(c): plain PyTorch loop over dm.train_dataloader(), no Lightning Trainer"
    )

    runs = [(spec, workers) for spec in specs for workers in (settings.naive_workers if spec.build == "naive" else [0])]
    rows = []
    for spec, workers in runs:
        name = spec.title + (f", num_workers={workers}" if spec.build == "naive" else "")
        print(f"running {name} ...", flush=True)
        tick = time.perf_counter()
        result = run_in_child(run_pipeline, Request(spec.name, workers, settings))
        summary = summarise(result, settings.warmup_steps)
        rows.append((name, result, summary))
        print(
            f"  done in {time.perf_counter() - tick:.1f} s: {summary['warm_median']:.1f} samples/s warm, "
            f"test accuracy {result['test_accuracy']:.3f}; {load_line('now')}",
            flush=True,
        )
    print_table(rows)
    by_key = {name[:3]: summary for name, _, summary in rows}
    naive = [summary for name, _, summary in rows if name.startswith("(a)")]
    if naive and "(b)" in by_key:
        warm = by_key["(b)"]["warm_median"] / max(s["warm_median"] for s in naive)
        first = min(s["first_epoch"] for s in naive) / by_key["(b)"]["first_epoch"]
        print(
            f"stated targets (not asserted): (b) >= 2x (a) warm -> measured {warm:.2f}x; "
            f">= 3x over the first epoch -> measured {first:.2f}x; equal test accuracy (see table)"
        )
    fitted = next((result for name, result, _ in rows if name.startswith("(f)")), None)
    if fitted is not None and "(b)" in by_key:
        bare_result = next(result for name, result, _ in rows if name.startswith("(b)"))
        print(fit_line(fitted, by_key["(b)"], bare_result, n_test, naive))
    print(load_line("at end"))
    if subset is not None:
        shutil.rmtree(subset, ignore_errors=True)


if __name__ == "__main__":
    main(command_line(Settings, __doc__))
