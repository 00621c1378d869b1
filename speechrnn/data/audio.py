"""Audio corpora: files -> checked waveforms -> MFCC sequences in a memory-mapped feature cache."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from speechrnn.audio import AudioError, read_audio
from speechrnn.data.base import Record, SequenceDataModuleBase
from speechrnn.data.cache import MemmapFeatureCache, cache_key, map_with_progress
from speechrnn.features import FeatureSettings, MFCCFrontend

OnError = Literal["raise", "skip"]


@functools.lru_cache(maxsize=4)
def _frontend(settings: FeatureSettings) -> MFCCFrontend:
    return MFCCFrontend(settings).eval()


def extract_features(path: str, settings: FeatureSettings) -> np.ndarray:
    """MFCC sequence ``(T, F)`` of one file, exactly as training sees it; raises :class:`AudioError`."""
    waveform = read_audio(path, settings.rate, min_samples=settings.win_length)
    with torch.inference_mode():
        features, _ = _frontend(settings)(waveform.unsqueeze(0))
    return features[0].numpy()


def _extract_or_error(path: str, settings: FeatureSettings) -> np.ndarray | AudioError:
    try:
        return extract_features(path, settings)
    except AudioError as error:
        return error


class AudioDataModule(SequenceDataModuleBase):
    """Base of the audio DataModules: reads, checks and featurises files once, into a cache.

    The cache lives in ``cache_dir/<name>-<hash>/``; the hash covers the feature settings and every
    file's path, size and modification time, so any change builds a new cache.
    """

    def __init__(
        self,
        features: FeatureSettings = FeatureSettings(),
        cache_dir: str | os.PathLike = "data/cache",
        on_error: OnError = "raise",
        cache_workers: int = 0,
        batch_size: int = 32,
        max_frames: int | None = None,
        bucketing: bool = True,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
    ) -> None:
        """
        Args:
            features: MFCC settings; stored in checkpoints so inference matches training.
            cache_dir: Folder holding feature caches.
            on_error: ``raise`` stops before training at the first bad file, naming it; ``skip``
                leaves bad files out and lists them with their reason in ``skipped.csv`` beside
                the cache.
            cache_workers: Processes used to build the cache (0: in this process).
        """
        super().__init__(batch_size, max_frames, bucketing, num_workers, val_fraction, test_fraction, seed)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.features = features.resolve(self.native_sample_rate)
        self.cache_dir = Path(cache_dir)
        self.on_error = on_error
        self.cache_workers = cache_workers
        self.cache: MemmapFeatureCache | None = None

    native_sample_rate: int = 16000
    """Feature sample rate used when ``features.sample_rate`` is left unset."""

    @property
    def name(self) -> str:
        """Prefix of this corpus's cache folders."""
        return type(self).__name__.removesuffix("DataModule").lower()

    @property
    def feature_settings(self) -> FeatureSettings:
        return self.features

    @property
    def feature_dim(self) -> int:
        return self.features.feature_dim

    def cache_path(self, records: list[Record]) -> Path:
        key = cache_key(self.features.to_dict(), [r.source for r in records])
        return self.cache_dir / f"{self.name}-{key}"

    def prepare_data(self) -> None:
        """Build the feature cache if needed (one process under DDP; keeps no state)."""
        self.ensure_cache(self.load_records())

    def ensure_cache(self, records: list[Record]) -> MemmapFeatureCache:
        path = self.cache_path(records)
        if not MemmapFeatureCache.exists(path):
            sources = [r.source for r in records]
            extract = extract_features if self.on_error == "raise" else _extract_or_error
            results = map_with_progress(
                functools.partial(extract, settings=self.features),
                sources,
                f"features: {self.name}",
                self.cache_workers,
            )
            MemmapFeatureCache.build(
                path, sources, results, self.features.feature_dim, {"settings": self.features.to_dict()}
            )
        cache = MemmapFeatureCache(path)
        if cache.skipped:
            print(f"{self.name}: skipped {len(cache.skipped)} bad file(s); see {path / 'skipped.csv'}")
        return cache

    def build_store(self, records: list[Record]) -> tuple[MemmapFeatureCache, list[int]]:
        self.cache = self.ensure_cache(records)
        position_of = {r.source: i for i, r in enumerate(records)}
        return self.cache, [position_of[key] for key in self.cache.keys]
