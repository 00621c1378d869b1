"""``CharTextDataModule``: a text file as a character-level language-modelling task.

The text is cut into fixed-length chunks; each chunk's features are its characters one-hot
``(T, V)`` and its per-step targets the next character (``frame_classification``), so the
package's recurrent networks learn ``P(c_{t+1} | c_1..c_t)`` exactly as the classic char-RNN does,
and ``python -m speechrnn.generate`` samples text from the checkpoint. Validation and test chunks
come from the end of the text (contiguous, so no test character is seen in training).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from speechrnn.data.corpora.sequences import SequenceDataModule
from speechrnn.errors import MissingInputError, UserInputError

SUBJECTS = ("the old sailor", "a small bird", "the miller", "my sister", "the river", "an honest man", "the wind")
VERBS = ("sees", "carries", "follows", "remembers", "sings to", "waits for", "builds")
OBJECTS = ("the grey house", "a long road", "the morning light", "seven stones", "the quiet field", "her brother")
ENDINGS = (".", ".", ".", "!", "?")


def generated_text(sentences: int = 2000, seed: int = 0) -> str:
    """A deterministic English-like text from a small grammar (the default corpus: nothing to
    download, and regular enough that a small model learns it within minutes on a CPU)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(sentences):
        subject, verb, obj = (options[int(rng.integers(len(options)))] for options in (SUBJECTS, VERBS, OBJECTS))
        clause = f"{subject} {verb} {obj}"
        if rng.random() < 0.3:
            clause += f" and {VERBS[int(rng.integers(len(VERBS)))]} {OBJECTS[int(rng.integers(len(OBJECTS)))]}"
        lines.append(clause[0].upper() + clause[1:] + ENDINGS[int(rng.integers(len(ENDINGS)))])
    return " ".join(lines) + "\n"


def read_text(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: text file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserInputError(f"{path}: not UTF-8 text ({error})") from None


def one_hot(indices: np.ndarray, size: int) -> np.ndarray:
    """``(T,)`` character indices as ``(T, size)`` float32 one-hot rows."""
    return np.eye(size, dtype=np.float32)[indices]


class CharTextDataModule(SequenceDataModule):
    """Character-level language modelling on a UTF-8 text file (default: a generated text)."""

    def __init__(
        self,
        text_path: str | os.PathLike | None = None,
        chunk_length: int = 64,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            text_path: UTF-8 text file; None uses :func:`generated_text`.
            chunk_length: Characters per training sequence (backpropagation through time spans one chunk).
            val_fraction: Share of chunks, taken from the end of the text before the test chunks,
                held out for validation.
            test_fraction: Share of chunks at the very end of the text held out for testing.
            **kwargs: Batching options of :class:`~speechrnn.data.base.SequenceDataModuleBase`.
        """
        if chunk_length < 1:
            raise UserInputError(f"chunk_length must be >= 1, got {chunk_length}")
        super().__init__(
            path=None, task="frame_classification", normalize="none", val_fraction=val_fraction,
            test_fraction=test_fraction, **kwargs,
        )  # fmt: skip
        self.text_path = text_path
        self.chunk_length = chunk_length
        self._text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = generated_text() if self.text_path is None else read_text(self.text_path)
        return self._text

    @property
    def vocabulary(self) -> list[str]:
        """The characters of the text, sorted: index ``i`` is class ``i`` (and ``class_names[i]``)."""
        return self.class_names

    @property
    def class_names(self) -> list[str]:
        return self.arrays["vocabulary"]

    @property
    def arrays(self) -> dict[str, Any]:
        if self._arrays is None:
            self._arrays = self._chunk(self.text)
        return self._arrays

    def _chunk(self, text: str) -> dict[str, Any]:
        """Chunks, next-character targets, contiguous splits and the sorted vocabulary of ``text``."""
        vocabulary = sorted(set(text))
        index_of = {char: i for i, char in enumerate(vocabulary)}
        codes = np.array([index_of[char] for char in text], dtype=np.int64)
        count = (len(codes) - 1) // self.chunk_length
        if count < 3:
            raise UserInputError(
                f"the text has {len(codes)} characters: too few for three chunks of {self.chunk_length} (train, "
                "val, test); lower chunk_length or give a longer text"
            )
        starts = np.arange(count) * self.chunk_length
        inputs = [codes[s : s + self.chunk_length] for s in starts]
        targets = [codes[s + 1 : s + self.chunk_length + 1] for s in starts]
        test = max(1, round(count * self.test_fraction))
        val = max(1, round(count * self.val_fraction))
        splits = ["train"] * (count - val - test) + ["val"] * val + ["test"] * test
        return {
            "features": [one_hot(chunk, len(vocabulary)) for chunk in inputs],
            "targets": targets,
            "splits": np.array(splits),
            "vocabulary": vocabulary,
        }

    def decode(self, indices: Any) -> str:
        """Characters of class indices (the inverse of the chunking, for checks and samples)."""
        vocabulary = self.vocabulary
        return "".join(vocabulary[int(i)] for i in np.asarray(indices).reshape(-1))
