"""``SyntheticCommandsDataModule``: the embedded default corpus, generated on first use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from speechrnn.data.audio_base import AudioDataModule
from speechrnn.data.corpora.folder import read_manifest
from speechrnn.data.corpora.synthetic.generator import WORDS, SyntheticCorpusConfig, corpus_is_current, generate_corpus
from speechrnn.data.records import Record

DEFAULT_ROOT = Path("data/synthetic_commands")


class SyntheticCommandsDataModule(AudioDataModule):
    """synthetic-commands: formant-synthesised command words from many synthetic speakers.

    Needs no download: ``prepare_data`` generates the corpus deterministically from ``corpus_seed``
    into ``root`` (16 kHz wav files and ``manifest.csv``), and regenerates it only when it is
    missing or its generation parameters changed. Its train/val/test splits are speaker-disjoint
    and come from the manifest. Some words share their sounds in a different order, so only a
    model that reads order can tell them apart.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        num_speakers: int = 30,
        repetitions: int = SyntheticCorpusConfig.repetitions,
        val_speakers: int = 5,
        test_speakers: int = 5,
        corpus_seed: int = 0,
        generation_workers: int | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            root: Where the corpus is generated (default ``data/synthetic_commands``).
            num_speakers: Synthetic speakers (each differs in pitch, vocal-tract length, rate, loudness).
            repetitions: Clips per speaker and word.
            val_speakers: Speakers held out for validation.
            test_speakers: Speakers held out for testing.
            corpus_seed: Seed of the generator (the corpus is a pure function of its parameters).
            generation_workers: Processes used to generate (default: all cores).
            **kwargs: Feature, cache, augmentation and batching options of
                :class:`~speechrnn.data.audio_base.AudioDataModule`.
        """
        self.corpus = SyntheticCorpusConfig(
            num_speakers=num_speakers, repetitions=repetitions, val_speakers=val_speakers, test_speakers=test_speakers,
            seed=corpus_seed,
        )  # fmt: skip
        self.generation_workers = generation_workers
        root = Path(root if root is not None else DEFAULT_ROOT)
        super().__init__(val_fraction=0.0, test_fraction=0.0, **kwargs)
        self.manifest = root / "manifest.csv"
        self.corpus_root = root

    @property
    def name(self) -> str:
        return f"synthetic_commands-{self.corpus.fingerprint()[:8]}"

    @property
    def label_names(self) -> list[str]:
        return sorted(WORDS)

    def generate(self) -> Path:
        """Generate the corpus unless an identical one is already in ``root``; returns the manifest."""
        return generate_corpus(self.corpus_root, self.corpus, num_workers=self.generation_workers, progress=True)

    def prepare_data(self) -> None:
        self.generate()
        super().prepare_data()

    def load_records(self) -> list[Record]:
        if not corpus_is_current(self.corpus_root, self.corpus):
            self.generate()
        return read_manifest(self.manifest)
