"""Feature storage behind one small interface, and the on-disk memory-mapped cache.

A :class:`FeatureStore` is a read-only sequence of ``(T_i, F)`` float32 arrays with their lengths.
DataModules only use that interface, so a different backend (e.g. sharded streaming storage)
can replace the memory-mapped cache without touching batching or splitting.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from speechrnn.io import atomic_directory

CACHE_FORMAT_VERSION = 1
PARALLEL_CACHE_FILES = 1024
"""Fewest files whose cache is built by a process per core when the number of processes is left to
the default: starting the pool costs 60-80 ms, which a few hundred clips do not repay (on 2 cores,
512 FSDD clips took 0.14 s in one process and 0.15-0.16 s in two; all 2,500, 0.67 s and 0.50 s)."""


class FeatureStore(ABC):
    """Read-only, indexable collection of feature sequences ``(T_i, F)``."""

    @property
    @abstractmethod
    def lengths(self) -> np.ndarray:
        """``(N,)`` int64 number of frames of each sequence."""

    @property
    @abstractmethod
    def feature_dim(self) -> int:
        """Feature size ``F``."""

    @abstractmethod
    def __getitem__(self, index: int) -> np.ndarray:
        """Sequence ``index`` as a ``(T_i, F)`` float32 array (may be a read-only view)."""

    def __len__(self) -> int:
        return len(self.lengths)


class ConcatenatedFeatureStore(FeatureStore):
    """All frames in one ``(total_frames, F)`` array plus ``N + 1`` offsets; works for RAM or memmap."""

    def __init__(self, frames: np.ndarray, offsets: np.ndarray) -> None:
        if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(frames):
            raise ValueError("offsets must start at 0 and end at the number of frames")
        self.frames = frames
        self.offsets = offsets.astype(np.int64)
        self._lengths = np.diff(self.offsets)

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray]) -> ConcatenatedFeatureStore:
        if not arrays:
            raise ValueError("cannot build a feature store from zero sequences")
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])])
        return cls(np.ascontiguousarray(np.concatenate(arrays), dtype=np.float32), offsets)

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths

    @property
    def feature_dim(self) -> int:
        return self.frames.shape[1]

    def __getitem__(self, index: int) -> np.ndarray:
        return self.frames[self.offsets[index] : self.offsets[index + 1]]


@dataclass(frozen=True)
class SkippedFile:
    """A source left out of a cache with ``on_error="skip"``."""

    path: str
    reason: str


class MemmapFeatureCache(ConcatenatedFeatureStore):
    """A finished cache folder: ``frames.f32`` (raw float32), ``offsets.npy``, ``index.json``.

    The folder only appears under its final name once complete (written under a temporary name,
    then renamed), so an interrupted build never looks finished.

    Items are read with ``pread`` rather than through the memory map (``frames``, kept for bulk
    access): the map would keep every page read in the process's resident memory, so an epoch over
    a 100k-clip corpus would hold the whole cache there; a read leaves the pages to the page cache.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        index = json.loads((self.directory / "index.json").read_text())
        if index.get("format") != CACHE_FORMAT_VERSION:
            raise ValueError(f"{self.directory}: cache format {index.get('format')} is not {CACHE_FORMAT_VERSION}")
        self.keys: list[str] = index["keys"]
        offsets = np.load(self.directory / "offsets.npy")
        shape = (int(offsets[-1]), int(index["feature_dim"]))
        frames = (
            np.memmap(self.directory / "frames.f32", dtype=np.float32, mode="r", shape=shape)
            if shape[0] > 0
            else np.zeros(shape, np.float32)
        )
        super().__init__(frames, offsets)
        self.skipped = read_skipped(self.directory / "skipped.csv")
        self._file: tuple[int, int] | None = None  # (process id, descriptor), opened on first read

    def __getitem__(self, index: int) -> np.ndarray:
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        if not hasattr(os, "preadv"):
            return np.array(self.frames[start:stop])
        out = np.empty((stop - start, self.feature_dim), np.float32)
        view, position = memoryview(out).cast("B"), start * out.itemsize * self.feature_dim
        while len(view):
            read = os.preadv(self._descriptor(), [view], position)
            if read == 0:
                raise OSError(f"{self.directory / 'frames.f32'}: ends early (item {index}); rebuild the cache")
            view, position = view[read:], position + read
        return out

    def _descriptor(self) -> int:
        """This process's descriptor of ``frames.f32`` (DataLoader workers open their own)."""
        if self._file is None or self._file[0] != os.getpid():
            self._file = (os.getpid(), os.open(self.directory / "frames.f32", os.O_RDONLY))
        return self._file[1]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}

    def __del__(self) -> None:
        if getattr(self, "_file", None) is not None and self._file[0] == os.getpid():
            os.close(self._file[1])

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        return (Path(directory) / "index.json").is_file()

    @classmethod
    def build(
        cls,
        directory: str | os.PathLike,
        keys: Sequence[str],
        results: Iterable[np.ndarray | Exception],
        feature_dim: int,
        metadata: dict[str, Any] | None = None,
    ) -> MemmapFeatureCache:
        """Write one cache from ``results`` (features or the error for each of ``keys``, in order).

        Errors become rows of ``skipped.csv``; raising is the caller's choice, made before this.
        """
        directory = Path(directory)
        with atomic_directory(directory, usable=cls.exists) as tmp:
            kept: list[str] = []
            skipped: list[SkippedFile] = []
            offsets = [0]
            with open(tmp / "frames.f32", "wb") as out:
                for key, result in zip(keys, results, strict=True):
                    if isinstance(result, Exception):
                        skipped.append(SkippedFile(key, str(getattr(result, "reason", result))))
                        continue
                    array = np.ascontiguousarray(result, dtype=np.float32)
                    if array.ndim != 2 or array.shape[1] != feature_dim:
                        raise ValueError(f"{key}: features of shape {array.shape}, expected (T, {feature_dim})")
                    out.write(array.tobytes())
                    offsets.append(offsets[-1] + len(array))
                    kept.append(key)
                out.flush()
                os.fsync(out.fileno())
            np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
            write_skipped(tmp / "skipped.csv", skipped)
            index = {"format": CACHE_FORMAT_VERSION, "feature_dim": feature_dim, "keys": kept, **(metadata or {})}
            (tmp / "index.json").write_text(json.dumps(index))
        return cls(directory)


def cache_key(settings: dict[str, Any], files: Sequence[str | os.PathLike]) -> str:
    """Hash of the settings and of each file's path, size and modification time."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT_VERSION, settings], sort_keys=True).encode())
    for file in files:
        try:
            stat = os.stat(file)
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{file}\0missing\n".encode())
    return digest.hexdigest()[:16]


def write_skipped(path: Path, skipped: Sequence[SkippedFile]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows([(item.path, item.reason) for item in skipped])


def read_skipped(path: Path) -> list[SkippedFile]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [SkippedFile(row["path"], row["reason"]) for row in csv.DictReader(handle)]


def usable_cores() -> int:
    """Cores this process may run on (its affinity, which a container or ``taskset`` narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_cache_workers(files: int) -> int:
    """Processes that build a cache of ``files`` files when the user left it open: one per core
    from :data:`PARALLEL_CACHE_FILES` files on, none (this process) below it, on one core, or where
    new processes are not forked (macOS, Python 3.14's Linux default): a spawned worker imports torch
    afresh, seconds that a cache of a few thousand clips does not repay, and it would re-run a user's
    script that lacks an ``if __name__ == "__main__"`` guard."""
    cores = usable_cores()
    forked = (multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]) == "fork"
    return cores if cores > 1 and forked and files >= PARALLEL_CACHE_FILES else 0


def map_chunks_with_progress(
    function: Callable[[Sequence[Any]], list[Any]],
    items: Sequence[Any],
    description: str,
    num_workers: int = 0,
    chunk_size: int = 64,
) -> Iterable[Any]:
    """Yield the result for each of ``items`` in order, where ``function`` maps a list of up to
    ``chunk_size`` items to their results (so it can batch work across items); with a progress bar,
    in a process pool when ``num_workers > 0``."""
    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    with Progress(transient=True) as progress:
        task = progress.add_task(description, total=len(items))
        if num_workers > 0:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(num_workers, initializer=_single_thread) as pool:
                batch = max(1, len(chunks) // (num_workers * 8))
                for chunk, results in zip(chunks, pool.map(function, chunks, chunksize=batch), strict=True):
                    progress.advance(task, len(chunk))
                    yield from results
        else:
            for chunk in chunks:
                results = function(chunk)
                progress.advance(task, len(chunk))
                yield from results


def _single_thread() -> None:
    """Worker set-up: one thread each, and exit when the parent dies (a killed build must not leave
    workers holding hundreds of MB)."""
    import threading

    import torch

    torch.set_num_threads(1)
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="exit-with-parent").start()


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)
