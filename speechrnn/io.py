"""Atomic file writes (a reader never sees a half-written report, config or cache file), and
checkpoint reading that never runs code from the file."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pickle
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from speechrnn.errors import MissingInputError, UserInputError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())  # mkstemp's 0600 is not what open() gives
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


STALE_FOREIGN_BUILD_SECONDS = 24 * 3600
"""A temporary build folder of another machine (shared storage) is removed after this long."""


def _sibling(target: Path, kind: str) -> Path:
    """``.<name>.<kind>-<host>-<pid>-<random>`` beside ``target``: whose it is, so leftovers can be told apart."""
    return target.parent / f".{target.name}.{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike, replace: bool = False, usable: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Build a folder under a temporary sibling name, yielded, and rename it to ``target`` when the
    block ends without error, so an interrupted build never looks finished (its leftovers are
    removed by the next build: :func:`remove_stale_builds`).

    If ``target`` exists by then: ``replace`` swaps it out and deletes it; otherwise, when
    ``usable(target)`` says another process finished the same folder first, the new build is
    discarded, and else the rename's error is raised. On error the temporary folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(target)
    build = _sibling(target, "tmp")
    build.mkdir()
    try:
        yield build
        if replace and (target.exists() or target.is_symlink()):
            retired = _sibling(target, "old")
            target.rename(retired)
            build.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            try:
                os.rename(build, target)
            except OSError:
                if usable is None or not usable(target):
                    raise
                shutil.rmtree(build)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


def remove_stale_builds(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders that interrupted builds of ``target`` left behind: those of a
    process of this machine that no longer runs, and those of other machines older than a day.
    A build that is still running is left alone. Returns what was removed."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{{8}}$")
    removed = []
    for candidate in sorted(target.parent.glob(f".{glob.escape(target.name)}.*-*")):
        match = pattern.match(candidate.name)
        if match is None or not candidate.is_dir():
            continue
        if match["host"] == socket.gethostname():
            stale = not process_alive(int(match["pid"]))
        else:
            try:
                stale = time.time() - candidate.stat().st_mtime > STALE_FOREIGN_BUILD_SECONDS
            except FileNotFoundError:
                continue
        if stale:
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def current_umask() -> int:
    """The process's file-creation mask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


class CheckpointError(UserInputError):
    """A file that is not a checkpoint speechrnn can load safely."""


@contextlib.contextmanager
def checkpoint_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn the ways loading ``path`` as a checkpoint can fail into one :class:`CheckpointError`
    naming the file (a missing file stays a :class:`MissingInputError`)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: checkpoint not found")
    try:
        yield
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise CheckpointError(f"{path}: not a checkpoint written by speechrnn ({error})") from error
        detail = next((line for line in str(error).splitlines() if "GLOBAL" in line), "").strip()
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain data, and loading them "
            f"would run code from the file{f' ({detail})' if detail else ''}"
        ) from error
    except (RuntimeError, ValueError, EOFError, IndexError, KeyError, TypeError, AttributeError) as error:
        if isinstance(error, UserInputError):
            raise
        raise CheckpointError(
            f"{path}: not a checkpoint written by speechrnn ({type(error).__name__}: {error})"
        ) from error


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The contents of a checkpoint file, loaded with ``weights_only=True`` (no code runs)."""
    import torch

    with checkpoint_errors(path):
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(f"{path}: not a checkpoint written by speechrnn (no state_dict)")
    return checkpoint
