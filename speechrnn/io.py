"""Atomic file writes (a reader never sees a half-written report, config or cache file), and
checkpoint reading that never runs code from the file."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
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
