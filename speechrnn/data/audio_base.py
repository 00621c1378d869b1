"""Audio corpora: files -> checked waveforms -> MFCC sequences in a memory-mapped feature cache."""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader

from speechrnn.audio_io import AudioError, read_audio
from speechrnn.data.augment import WARP_GRID, AugmentedStatistics, Augmenter, AugmentSettings
from speechrnn.data.base import CACHE_DIR, PadCollate, SequenceDataModuleBase, SequenceDataset
from speechrnn.data.defaults import CPU_WAVEFORM_AUGMENT_MINUTES, choose_augmentation, training_audio_minutes
from speechrnn.data.open_set import (
    SILENCE,
    SILENCE_SECONDS,
    OpenSetOptions,
    background_files,
    background_regions,
    digest,
    open_set_classes,
    per_split,
    sample_unknown,
    silence_counts,
    silence_description,
    silence_records,
    write_silence_clips,
)
from speechrnn.data.records import Record
from speechrnn.data.splits import SPLITS, Split
from speechrnn.data.storage.bucketing import BucketBatchSampler
from speechrnn.data.storage.feature_cache import (
    MemmapFeatureCache,
    cache_key,
    default_cache_workers,
    map_chunks_with_progress,
)
from speechrnn.errors import ConfigError, UserInputError
from speechrnn.features import FeatureSettings, MFCCFrontend
from speechrnn.normalization import FrameMoments, Normalization, standardize

OnError = Literal["raise", "skip"]
LongClips = Literal["error", "crop"]
CACHE_CHUNK = 64  # files featurised per call (padded batches of similar length)
OUTLIER_RATIO = 10.0
"""Clips this many times longer than the corpus's median are listed in a warning."""
VOICE_ACTIVITY_CLASSES = ("non-speech", "speech")
AUGMENTED_STATISTICS_CLIPS = 100
"""Training clips per speaker from which speed and warp effects on its statistics are measured."""


def speech_frames(segments: tuple[tuple[float, float], ...], num_frames: int, settings: FeatureSettings) -> np.ndarray:
    """``(num_frames,)`` int64: 1 where a frame's centre falls inside a speech segment, else 0."""
    centres = np.arange(num_frames) * (settings.hop_length / settings.rate)
    labels = np.zeros(num_frames, np.int64)
    for start, end in segments:
        labels[(centres >= start) & (centres < end)] = 1
    return labels


@dataclass(frozen=True)
class ClipLimit:
    """Longest clip the cache accepts, and whether a longer one is an error or cropped to its start."""

    max_seconds: float
    crop: bool = False

    def read_args(self, sample_rate: int) -> dict[str, Any]:
        return {"max_samples": round(self.max_seconds * sample_rate), "crop": self.crop}


def _read(path: str, settings: FeatureSettings, limit: ClipLimit | None) -> torch.Tensor:
    extra = limit.read_args(settings.rate) if limit is not None else {}
    return read_audio(path, settings.rate, min_samples=settings.win_length, **extra)


@functools.lru_cache(maxsize=4)
def _frontend(settings: FeatureSettings) -> MFCCFrontend:
    return MFCCFrontend(settings).eval()


def extract_waveform(path: str, settings: FeatureSettings, limit: ClipLimit | None = None) -> np.ndarray:
    """Checked, resampled mono waveform as a ``(samples, 1)`` array, for on-device features."""
    return _read(path, settings, limit).numpy()[:, None]


def extract_features_batch(
    paths: list[str],
    settings: FeatureSettings,
    skip_errors: bool = False,
    max_samples: int = 2**21,
    limit: ClipLimit | None = None,
) -> list[np.ndarray | AudioError]:
    """MFCC sequences of ``paths``, in order, computed on padded batches of similar length.

    The front end is exact under padding, so each result equals the file featurised alone; batching
    only saves per-call overhead. Batches hold clips within 1.5x of each other's length (little
    padding) and at most ``max_samples`` padded samples. A bad file raises its
    :class:`AudioError`, or with ``skip_errors`` takes that error's place in the list.
    """
    results: list[np.ndarray | AudioError | None] = [None] * len(paths)
    waveforms: dict[int, torch.Tensor] = {}
    for position, path in enumerate(paths):
        try:
            waveforms[position] = _read(path, settings, limit)
        except AudioError as error:
            if not skip_errors:
                raise
            results[position] = error
    order = sorted(waveforms, key=lambda position: len(waveforms[position]))
    frontend = _frontend(settings)
    start = 0
    while start < len(order):
        shortest, stop = len(waveforms[order[start]]), start + 1
        while stop < len(order):
            length = len(waveforms[order[stop]])
            if length > 1.5 * shortest or length * (stop - start + 1) > max_samples:
                break
            stop += 1
        chunk = order[start:stop]
        lengths = torch.tensor([len(waveforms[position]) for position in chunk])
        padded = torch.nn.utils.rnn.pad_sequence([waveforms[position] for position in chunk], batch_first=True)
        with torch.inference_mode():
            features, frames = frontend(padded, lengths)
        for row, position in enumerate(chunk):
            results[position] = features[row, : frames[row]].numpy().copy()
        start = stop
    return results  # type: ignore[return-value]


def _extract_chunk(
    paths: list[str], settings: FeatureSettings, on_device: bool, skip_errors: bool, limit: ClipLimit | None
) -> list:
    if not on_device:
        return extract_features_batch(paths, settings, skip_errors, limit=limit)
    extract = functools.partial(_or_error, extract_waveform) if skip_errors else extract_waveform
    return [extract(path, settings, limit) for path in paths]


def _or_error(extract, path: str, settings: FeatureSettings, limit: ClipLimit | None) -> np.ndarray | AudioError:
    try:
        return extract(path, settings, limit)
    except AudioError as error:
        return error


class AudioDataModule(SequenceDataModuleBase):
    """Base of the audio DataModules: reads, checks and featurises files once, into a cache.

    The cache lives in ``cache_dir/<name>-<hash>/``; the hash covers the feature settings and every
    file's path, size and modification time, so any change builds a new cache.

    Every audio corpus can be a keyword-spotting (open-set) one: ``keywords`` keep some labels as
    classes and map the others to ``_unknown_``, and ``_silence_`` clips are cut from background
    recordings (:mod:`speechrnn.data.open_set`; :meth:`background_recordings` gives each split's
    background material).
    """

    def __init__(
        self,
        features: FeatureSettings = FeatureSettings(),
        cache_dir: str | os.PathLike = CACHE_DIR,
        on_error: OnError = "raise",
        max_seconds: float | None = None,
        long_clips: LongClips = "error",
        cache_workers: int | None = None,
        on_device_features: bool | None = None,
        augment: AugmentSettings | None = None,
        voice_activity: bool = False,
        keywords: list[str] | None = None,
        unknown_fraction: float | None = 0.1,
        silence_fraction: float = 0.1,
        background_dir: str | os.PathLike | None = None,
        silence_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            features: MFCC settings; stored in checkpoints so inference matches training.
            cache_dir: Folder holding feature caches.
            on_error: ``raise`` stops before training at the first bad file, naming it; ``skip``
                leaves bad files out and lists them with their reason in ``skipped.csv`` beside
                the cache.
            max_seconds: Longest clip accepted (seconds after resampling, checked from each file's
                header before it is decoded); None: up to :data:`speechrnn.audio_io.MAX_SECONDS`.
                One long outlier stretches every batch it lands in and can cost gigabytes.
            long_clips: What happens to clips longer than ``max_seconds``: ``error`` treats them as
                bad input (``on_error`` then raises or skips), ``crop`` keeps their first
                ``max_seconds``.
            cache_workers: Processes used to build the cache (0: in this process). None: one per
                core for a corpus of at least
                :data:`~speechrnn.data.storage.feature_cache.PARALLEL_CACHE_FILES` files, otherwise
                in this process.
            on_device_features: Cache waveforms instead of features and compute MFCC (and
                augmentation) on the accelerator in ``on_after_batch_transfer``; batches read
                straight from the DataLoader then hold waveforms ``(batch, samples, 1)``. None:
                whatever the augmentation needs (waveforms for speed, warps and noise).
            augment: Training-split augmentation (time shift, background noise, SpecAugment,
                speed, vocal-tract length). None: in a training run (a Lightning Trainer attached),
                chosen for the corpus and machine (:mod:`speechrnn.data.defaults`): the new-speaker
                recipe's waveform augmentation on a GPU or for small corpora on a CPU, SpecAugment
                and time shift otherwise, none for ``voice_activity``; used by hand, none.
            voice_activity: Label every frame speech or non-speech from the manifest's ``segments``
                (voice activity detection, a ``frame_classification`` task) instead of labelling
                each clip with its class.
            keywords: Open set (keyword spotting): the labels kept as classes; every other label of
                the corpus becomes ``_unknown_``, and ``_silence_`` clips are cut from the corpus's
                own background recordings (a ``_background_noise_`` folder) or ``background_dir``.
                Records keep their split (assigned first when the corpus has none), and
                ``_unknown_`` and ``_silence_`` examples of a split come from that split's material
                only (:mod:`speechrnn.data.open_set`). None: the corpus's own keywords, if any.
            unknown_fraction: ``_unknown_`` recordings per split: at most this fraction of the
                split's keyword recordings (rounded up), a seeded sample; 0.1 makes ``_unknown_``
                as large as an average class of ten keywords; None keeps them all; 0 drops the
                class. Every DataModule has the same defaults, so switching ``--data`` keeps them.
            silence_fraction: ``_silence_`` clips per split, as a fraction of the split's keyword
                recordings (rounded up); 0.1 makes it as large as an average class of ten keywords;
                0 drops the class.
            background_dir: Folder of background recordings (any audio files directly in it) to cut
                ``_silence_`` clips from, each file divided by time between the splits; also adds
                ``_silence_`` without ``keywords``. The clips are written once under
                ``cache_dir/_silence_/``.
            silence_seconds: Length of a ``_silence_`` clip; None: the corpus's clip length (1 s
                unless the corpus says otherwise).
            **kwargs: Batching and split options of :class:`SequenceDataModuleBase`.
        """
        super().__init__(**kwargs)
        self.open_set = OpenSetOptions(
            tuple(keywords) if keywords is not None else None,
            unknown_fraction,
            silence_fraction,
            Path(background_dir) if background_dir is not None else None,
            silence_seconds,
        )
        if voice_activity and (keywords is not None or background_dir is not None):
            raise ConfigError("voice_activity labels frames, not clips: it cannot take keywords or background_dir")
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if max_seconds is not None and not max_seconds > 0:
            raise ConfigError(f"max_seconds must be > 0 (or None for no limit), got {max_seconds}")
        if long_clips not in ("error", "crop"):
            raise ConfigError(f"long_clips must be 'error' or 'crop', got {long_clips!r}")
        self.features = features.resolve(self.native_sample_rate)
        self.cache_dir = Path(cache_dir)
        self.on_error = on_error
        self.clip_limit = None if max_seconds is None else ClipLimit(float(max_seconds), long_clips == "crop")
        self.cache_workers = cache_workers
        self.voice_activity = voice_activity
        if voice_activity:
            augment = AugmentSettings() if augment is None else augment
            on_device_features = False if on_device_features is None else on_device_features
        self._check_augmentation(augment, on_device_features)
        self._augment = augment
        self._on_device_features = on_device_features
        self.training_run = False
        """Decide unset options as for training even without a Trainer attached (to build the cache a
        training run will read, e.g. in a pipeline's prepare stage)."""
        self.training_defaults = ""
        """The choices made for options left unset (normalisation, augmentation), in words."""
        self.cache: MemmapFeatureCache | None = None
        self._frontend: MFCCFrontend | None = None
        self._augmenter: Augmenter | None = None
        self._augmented_statistics: AugmentedStatistics | None = None

    native_sample_rate: int = 16000
    """Feature sample rate used when ``features.sample_rate`` is left unset."""

    # --- open-set classes (keywords, _unknown_, _silence_) -------------------------------------
    @property
    def vocabulary(self) -> list[str] | None:
        """The corpus's own labels when it knows them without reading its files (a fixed word
        list); None: whatever labels its records hold."""
        return None

    @property
    def default_keywords(self) -> list[str] | None:
        """The corpus's own keywords, used when ``keywords`` is not given (None: none)."""
        return None

    @property
    def corpus_background_dir(self) -> Path | None:
        """The corpus's own background recordings, used for ``_silence_`` when keywords are set and
        ``background_dir`` is not (None: it has none)."""
        return None

    @property
    def default_silence_seconds(self) -> float:
        """Length of a ``_silence_`` clip when ``silence_seconds`` is not given: the corpus's clip length."""
        return SILENCE_SECONDS

    @property
    def keywords(self) -> list[str] | None:
        """The keyword classes (``keywords``, else the corpus's own), or None without an open set."""
        keywords = self.open_set.keywords
        return list(keywords) if keywords is not None else self.default_keywords

    @property
    def background_dir(self) -> Path | None:
        """Where ``_silence_`` clips and background material come from: ``background_dir``, else the
        corpus's own background recordings when keywords are set; None: no background."""
        if self.open_set.background_dir is not None:
            return self.open_set.background_dir
        return self.corpus_background_dir if self.keywords is not None else None

    @property
    def silence_seconds(self) -> float:
        return self.open_set.silence_seconds or self.default_silence_seconds

    def _silence_class(self) -> bool:
        return self.background_dir is not None and self.open_set.silence_fraction > 0

    @property
    def label_names(self) -> list[str]:
        """The labels of the records, in class-index order: with an open set, the keywords and
        ``_unknown_`` and ``_silence_`` as the options ask (known without reading the corpus when
        its vocabulary is)."""
        keywords, silence = self.keywords, self._silence_class()
        known = keywords if keywords is not None else self.vocabulary
        if known is None:
            return super().label_names
        unknown = keywords is not None and self.open_set.unknown_fraction != 0
        return open_set_classes(known, unknown, silence)

    def complete_records(self, records: list[Record]) -> list[Record]:
        """The corpus's records with the open-set classes: keyword records as they are, then a
        seeded ``_unknown_`` sample of the others within each split, then ``_silence_`` clips; every
        record carries its split. Without keywords or background, ``records`` unchanged."""
        keywords, silence = self.keywords, self._silence_class()
        if keywords is None and not silence:
            return records
        name = type(self).__name__
        splits = self.record_splits(records)
        records = [dataclasses.replace(r, split=split) for r, split in zip(records, splits, strict=True)]
        chosen, unknown = records, []
        if keywords is not None:
            labels = self.vocabulary or sorted({r.label for r in records})
            missing = [k for k in keywords if k not in labels]
            if missing:
                raise UserInputError(f"{name}: keywords {missing} are not labels of the corpus (labels: {labels})")
            chosen = [r for r in records if r.label in keywords]
            others = [r for r in records if r.label not in keywords]
            if self.open_set.unknown_fraction != 0 and not others:
                raise UserInputError(
                    f"{name}: every label is a keyword, so _unknown_ has no examples (unknown_fraction=0 drops it)"
                )
            unknown = sample_unknown(others, per_split(chosen), self.open_set.unknown_fraction, self.seed)
        return chosen + unknown + (self._silence_records(per_split(chosen)) if silence else [])

    def non_keyword_recordings(self, split: Split) -> list[Record]:
        """Every recording of ``split`` whose word is not a keyword (its own label kept): the negative
        material of test streams. All of them, not the ``unknown_fraction`` sample that ``_unknown_``
        trains on: that fraction balances classes, and hours of negative audio looped from a few
        dozen clips would weigh each clip's false alarms a hundred times. Empty without keywords."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        keywords = self.keywords
        if keywords is None:
            return []
        records = self.load_records()
        return [
            r for r, s in zip(records, self.record_splits(records), strict=True)
            if s == split and r.label not in keywords and r.label != SILENCE
        ]  # fmt: skip

    def _silence_records(self, keywords_per_split: dict[str, int]) -> list[Record]:
        """``_silence_`` clips cut from the background recordings (written on first use)."""
        counts = silence_counts(self.open_set.silence_fraction, keywords_per_split)
        if not any(counts.values()):
            return []
        assert self.background_dir is not None
        files = background_files(self.background_dir)
        description = silence_description(files, counts, self.seed, self.silence_seconds)
        folder = self.silence_folder(description, files)
        return silence_records(write_silence_clips(files, counts, folder, [self.seed, 2], self.silence_seconds))

    def silence_folder(self, description: dict[str, Any], files: list[Path]) -> Path:
        """Folder of the ``_silence_`` clips that ``description`` (counts, seed, clip length, gain,
        sources) and the background ``files`` determine: ``cache_dir/_silence_/<name>-<hash>``."""
        where = [(str(f.resolve()), f.stat().st_mtime_ns) for f in files]
        return self.cache_dir / SILENCE / f"{self.name}-{digest({**description, 'files': where})}"

    def background_recordings(self, split: Split) -> list[tuple[str, int, int]]:
        """The background material of ``split``: ``(path, start_sample, end_sample)`` of each background
        recording's region for that split (samples at the file's own rate), the regions its
        ``_silence_`` clips are cut from, disjoint between splits (so test streams built from the
        test regions never reuse training background). Without ``_silence_`` clips (``silence_fraction``
        0) the files are divided in proportion to each split's records. Empty for a split with no region."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        if self.background_dir is None:
            raise ConfigError(
                f"{type(self).__name__}: no background recordings (give background_dir, or keywords for a corpus "
                "with its own _background_noise_)"
            )
        records = self.records
        counts = per_split(r for r in records if r.label == SILENCE)
        if not any(counts.values()):
            counts = per_split(records)
        return background_regions(background_files(self.background_dir), counts, self.silence_seconds)[split]

    def training_background(self) -> torch.Tensor:
        """The training split's background audio (:meth:`background_recordings`), one waveform at the
        feature rate: what ``augment.background_noise`` mixes into training clips."""
        rate = self.features.rate
        parts = []
        for path, start, end in self.background_recordings("train"):
            native = sf.info(path).samplerate
            wave = read_audio(path, rate, max_seconds=None)
            stop = round(end * rate / native) if end is not None else None
            parts.append(wave[round(start * rate / native) : stop])
        if not parts:
            raise ConfigError(f"{type(self).__name__}: augment.background_noise: the training split has no background")
        return torch.cat(parts)

    def _check_augmentation(self, augment: AugmentSettings | None, on_device_features: bool | None) -> None:
        if augment is not None and augment.needs_waveforms and on_device_features is False:
            raise ConfigError(
                "augment.noise_dir, coloured_noise, speed_factors, vtln_warp and gain_db need on_device_features=True "
                "(they work on waveforms, which only the waveform cache keeps)"
            )
        if self.voice_activity and (on_device_features or augment.time_shift_ms or augment.speed_factors):
            raise ConfigError(
                "voice_activity labels frames of the cached features: it needs on_device_features=False and "
                "no augment.time_shift_ms or augment.speed_factors (they would move speech away from its labels)"
            )

    def _decide_normalization(self, records: list[Record]) -> None:
        """``features.normalize='auto'`` decided from the records: for an open set (keywords), over the
        dataset, since a keyword spotter hears streams of unknown voices and noise with no speaker to
        take statistics from; else per speaker when every clip's speaker is known, else per utterance."""
        if self.features.normalize == "auto" and self.keywords is not None:
            self.features = dataclasses.replace(self.features, normalize="dataset")
            self._note_default("dataset normalisation (open set: streams have no one speaker)")
        elif self.features.normalize == "auto":
            speakers_known = all(r.speaker for r in records)
            self.features = self.features.with_normalization(speakers_known)
            self._note_default(f"{self.features.normalize} normalisation" + (" (speakers known)" * speakers_known))

    @property
    def normalization(self) -> Normalization:
        """``features.normalize``, with ``auto`` decided from the records on first use."""
        if self.features.normalize == "auto":
            self._decide_normalization(self.records)
        return self.features.normalize

    @property
    def augment(self) -> AugmentSettings:
        """The training-split augmentation (decided on first use when left unset)."""
        if self._augment is None or self._on_device_features is None:
            self._choose_augmentation()
        assert self._augment is not None
        return self._augment

    @augment.setter
    def augment(self, settings: AugmentSettings) -> None:
        self._augment = settings

    @property
    def on_device_features(self) -> bool:
        """Whether the cache holds waveforms and features are computed per batch (decided on first use
        when left unset)."""
        if self._augment is None or self._on_device_features is None:
            self._choose_augmentation()
        return bool(self._on_device_features)

    @on_device_features.setter
    def on_device_features(self, value: bool) -> None:
        self._on_device_features = value

    def _on_gpu(self) -> bool:
        trainer = getattr(self, "trainer", None)
        accelerator = getattr(trainer, "accelerator", None)
        if accelerator is not None:
            return type(accelerator).__name__ == "CUDAAccelerator"
        return torch.cuda.is_available()

    def _choose_augmentation(self) -> None:
        """Decide what was left unset. Under a Lightning Trainer (a training run), by the rules of
        :mod:`speechrnn.data.defaults`; a DataModule used by hand gives plain cached features."""
        if getattr(self, "trainer", None) is None and not self.training_run:
            self._augment = AugmentSettings() if self._augment is None else self._augment
            if self._on_device_features is None:
                self._on_device_features = self._augment.needs_waveforms
            return
        minutes = None
        if self._augment is None and self._on_device_features is not False and not self._on_gpu():
            records = self.records
            train = [
                r.source for r, split in zip(records, self.record_splits(records), strict=True) if split == "train"
            ]
            minutes = training_audio_minutes(train, CPU_WAVEFORM_AUGMENT_MINUTES)
        augment, on_device, why = choose_augmentation(
            self._augment, self._on_device_features, minutes, self._on_gpu(), background=self.background_dir is not None
        )
        self._check_augmentation(augment, on_device)
        if self._augment is None:
            self._note_default(why)
        self._augment, self._on_device_features = augment, on_device

    def _note_default(self, choice: str) -> None:
        self.training_defaults = f"{self.training_defaults}; {choice}" if self.training_defaults else choice
        rank_zero_info(f"{self.name}: {choice} (left to the defaults)")

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

    def clip_seconds(self) -> dict[str, float] | None:
        if self.store is None or not len(self.splits.get("train", ())):
            return None
        lengths = np.asarray(self.store.lengths)[self.splits["train"]].astype(np.float64)
        rate = self.features.rate
        seconds = lengths / rate if self.on_device_features else (lengths - 1) * self.features.hop_length / rate
        return {"median": round(float(np.median(seconds)), 4), "max": round(float(seconds.max()), 4)}

    @property
    def task(self) -> str:
        return "frame_classification" if self.voice_activity else "classification"

    @property
    def class_names(self) -> list[str]:
        return list(VOICE_ACTIVITY_CLASSES) if self.voice_activity else self.label_names

    def check_plan(self, records: list[Record] | None = None) -> list[str]:
        records = self.records if records is None else records
        self._decide_normalization(records)
        if self.voice_activity:
            unknown = [r.source for r in records if r.segments is None]
            if unknown:
                raise UserInputError(
                    f"{type(self).__name__}: voice_activity needs the speech segments of every clip (a 'segments' "
                    f"column in the manifest); {len(unknown)} clip(s) have none, e.g. {unknown[0]}"
                )
        return super().check_plan(records)

    def targets(self) -> np.ndarray:
        if not self.voice_activity:
            return super().targets()
        assert self.store is not None
        steps = np.empty(len(self.store_records), dtype=object)  # ragged: one array per clip
        for position, record in enumerate(self.store_records):
            segments = self.records[record].segments or ()
            steps[position] = speech_frames(segments, int(self.store.lengths[position]), self.features)
        return steps

    def cache_path(self, records: list[Record]) -> Path:
        settings = {"waveform_rate": self.features.rate} if self.on_device_features else self.features.to_dict()
        if self.clip_limit is not None:
            settings["clip_limit"] = dataclasses.asdict(self.clip_limit)
        key = cache_key(settings, [r.source for r in records])
        return self.cache_dir / f"{self.name}{'-wave' if self.on_device_features else ''}-{key}"

    def prepare_data(self) -> None:
        """Build the feature cache if needed (one process under DDP; keeps no state). The splits are
        checked first, from the file list alone, so a run that cannot work stops before the build."""
        records = self.complete_records(self.load_records())
        self.check_plan(records)
        self.ensure_cache(records)

    def ensure_cache(self, records: list[Record]) -> MemmapFeatureCache:
        path = self.cache_path(records)
        if not MemmapFeatureCache.exists(path):
            sources = [r.source for r in records]
            extract = functools.partial(
                _extract_chunk,
                settings=self.features,
                on_device=self.on_device_features,
                skip_errors=self.on_error == "skip",
                limit=self.clip_limit,
            )
            results = map_chunks_with_progress(
                extract,
                sources,
                f"{'waveforms' if self.on_device_features else 'features'}: {self.name}",
                default_cache_workers(len(sources)) if self.cache_workers is None else self.cache_workers,
                chunk_size=CACHE_CHUNK,
            )
            dim = 1 if self.on_device_features else self.features.feature_dim
            MemmapFeatureCache.build(path, sources, results, dim, {"settings": self.features.to_dict()})
        cache = MemmapFeatureCache(path)
        if cache.skipped:
            if self.on_error == "raise":  # the cache was built by an earlier run with on_error="skip"
                first = cache.skipped[0]
                raise AudioError(
                    first.path,
                    f"{first.reason} (on_error='raise'; an earlier run with on_error='skip' left out "
                    f"{len(cache.skipped)} file(s), listed in {path / 'skipped.csv'})",
                )
            print(f"{self.name}: skipped {len(cache.skipped)} bad file(s); see {path / 'skipped.csv'}")
        if self.clip_limit is None:
            self._warn_long_outliers(cache)
        return cache

    def _warn_long_outliers(self, cache: MemmapFeatureCache) -> None:
        lengths = cache.lengths
        if len(lengths) == 0:
            return
        median = float(np.median(lengths))
        outliers = np.flatnonzero(lengths > OUTLIER_RATIO * median)
        if len(outliers) == 0:
            return
        unit = 1 / self.features.rate if self.on_device_features else self.features.hop_length / self.features.rate
        longest = outliers[np.argsort(-lengths[outliers])][:5]
        listed = ", ".join(f"{cache.keys[i]} ({lengths[i] * unit:.1f} s)" for i in longest)
        warnings.warn(
            f"{self.name}: {len(outliers)} clip(s) over {OUTLIER_RATIO:g}x the median length "
            f"({median * unit:.2f} s) stretch every batch they land in: {listed}. "
            "max_seconds (with long_clips='crop' or 'error') limits clip length.",
            stacklevel=2,
        )

    def build_store(self, records: list[Record]) -> tuple[MemmapFeatureCache, list[int]]:
        self.cache = self.ensure_cache(records)
        position_of = {r.source: i for i, r in enumerate(records)}
        return self.cache, [position_of[key] for key in self.cache.keys]

    @property
    def frontend(self) -> MFCCFrontend:
        if self._frontend is None:
            self._frontend = MFCCFrontend(self.features)
        return self._frontend

    @property
    def augmenter(self) -> Augmenter:
        if self._augmenter is None:
            noise = self.training_background() if self.augment.background_noise else None
            self._augmenter = Augmenter(self.augment, self.features.rate, self.features.hop_length, noise)
        return self._augmenter

    def featurize(self, batch: Any, training: bool = False) -> Any:
        """Turn a batch as it leaves the DataLoader into the model's batch, on the batch's device:
        MFCC for on-device features, dataset normalisation, and augmentation when ``training``."""
        features, lengths, *rest = batch
        lengths = lengths.cpu()  # Lightning moved them with the batch; sizes and indices stay on the CPU
        augment = training and self.augment.enabled
        if self.on_device_features:
            audio, warps, speeds = features[..., 0], None, None
            if augment:
                augmenter = self.augmenter.to(audio.device)
                speeds = augmenter.draw_speeds(len(lengths)) if self.augment.speeds else None
                audio, lengths = augmenter.waveforms(audio, lengths, self.features.win_length, speeds)
                warps = augmenter.draw_warps(len(lengths)) if self.augment.vtln_warp else None
            features, lengths = self.frontend.to(audio.device)(audio, lengths, warps)
            statistics = self.batch_statistics(rest[-1], features.device)
            if augment and statistics is not None and self._augmented_statistics is not None:
                assert self.speaker_groups is not None
                groups = torch.from_numpy(self.speaker_groups[rest[-1].cpu().numpy()])
                statistics = self._augmented_statistics.adjust(*statistics, groups, speeds, warps)
            if statistics is not None:
                features = standardize(features, lengths, *statistics)
        if augment:
            features, lengths = self.augmenter.to(features.device).features(
                features, lengths, shift=not self.on_device_features
            )
        return (features, lengths, *rest)

    def state_dict(self) -> dict[str, Any]:
        """The data config, and the augmentation's random state (so a resumed run draws what an
        uninterrupted one would)."""
        state = super().state_dict()
        if self._augmenter is not None:
            state["augment_rng"] = self._augmenter.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("augment_rng") is not None:
            self.augmenter.generator.set_state(state_dict["augment_rng"])

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        training = trainer is not None and trainer.training
        if not (self.on_device_features or (training and self.augment.enabled)):
            return batch
        return self.featurize(batch, training)

    def collate(self) -> PadCollate:
        if self.on_device_features:
            return PadCollate()  # waveforms: statistics apply to features, after the front end
        return super().collate()

    def group_statistics(self, indices: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`SequenceDataModuleBase.group_statistics`, on waveforms through the front end."""
        if not self.on_device_features:
            return super().group_statistics(indices, groups)
        return self.group_statistics_views(indices, groups, [(None, None)])[0]

    def group_statistics_views(
        self, indices: np.ndarray, groups: np.ndarray, views: Sequence[tuple[int | None, float | None]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`group_statistics` of waveforms for each view ``(speed, warp)``: every clip at speed
        ``augment.speeds[speed]`` (None: as recorded), read through a filterbank warped by ``warp``
        (None: unwarped). One pass over the clips; the STFT is computed once per batch and speed, and
        shared by the warps."""
        assert self.store is not None
        count = int(groups.max()) + 1 if len(groups) else 1
        moments = [FrameMoments(count, self.feature_dim) for _ in views]
        by_speed: dict[int | None, list[int]] = {}
        for view, (speed, _) in enumerate(views):
            by_speed.setdefault(speed, []).append(view)
        group_of = dict(zip(np.asarray(indices).tolist(), np.asarray(groups).tolist(), strict=True))
        dataset = SequenceDataset(self.store, np.asarray(indices), np.zeros(len(self.store), np.int64))
        sampler = BucketBatchSampler(dataset.lengths, batch_size=CACHE_CHUNK, shuffle=False)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=PadCollate(), num_workers=self.num_workers)
        with torch.inference_mode():
            for audio, lengths, _, batch_indices in loader:
                audio = audio[..., 0]
                batch_groups = torch.tensor([group_of[int(i)] for i in batch_indices])
                for speed, members in by_speed.items():
                    clips, clip_lengths = audio, lengths
                    if speed is not None:
                        choice = torch.full((len(lengths),), speed, dtype=torch.int64)
                        clips, clip_lengths = self.augmenter.change_speed(
                            audio, lengths, choice, self.features.win_length
                        )
                    outputs = self.frontend.compute_warps(clips, clip_lengths, [views[v][1] for v in members])
                    for view, (features, frame_lengths) in zip(members, outputs, strict=True):
                        moments[view].add(features, frame_lengths, batch_groups)
        return [moment.result() for moment in moments]

    def _set_speaker_statistics(self) -> None:
        super()._set_speaker_statistics()
        augment = self.augment
        self._augmented_statistics = None
        if self.on_device_features and augment.augmented_statistics and (augment.speeds or augment.vtln_warp):
            self._augmented_statistics = self._measure_augmented_statistics()

    def _measure_augmented_statistics(self) -> AugmentedStatistics:
        """Each training speaker's statistics at every speed and on a grid of warps, from up to
        :data:`AUGMENTED_STATISTICS_CLIPS` of its training clips, relative to the same clips unchanged."""
        assert self.speaker_groups is not None
        groups = self.speaker_groups
        train = self.splits["train"]
        rng = np.random.default_rng(self.seed)
        sample = np.concatenate(
            [rng.permutation(train[groups[train] == g])[:AUGMENTED_STATISTICS_CLIPS] for g in np.unique(groups[train])]
        )
        count, dim = len(self.speaker_statistics), self.feature_dim
        sample_groups = groups[sample]
        seen = np.unique(sample_groups)
        speeds = list(range(len(self.augment.speeds)))
        grid = torch.linspace(1 - self.augment.vtln_warp, 1 + self.augment.vtln_warp, WARP_GRID)
        warp_views = [(None, float(w)) for w in grid] if self.augment.vtln_warp else []
        measured = self.group_statistics_views(
            sample, sample_groups, [(None, None), *[(k, None) for k in speeds], *warp_views]
        )
        clean_mean, clean_std = measured[0]

        def relative(mean: np.ndarray, std: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            shift = torch.zeros(count, dim)
            scale = torch.ones(count, dim)
            shift[seen] = torch.from_numpy(mean[seen] - clean_mean[seen])
            scale[seen] = torch.from_numpy(std[seen] / clean_std[seen])
            return shift, scale

        changed = [relative(mean, std) for mean, std in measured[1:]]
        speeds_moved, warps = changed[: len(speeds)], changed[len(speeds) :]

        def stack(parts: list[tuple[torch.Tensor, torch.Tensor]], which: int) -> torch.Tensor:
            if not parts:
                return torch.zeros(count, 0, dim)
            return torch.stack([part[which] for part in parts], dim=1)

        return AugmentedStatistics(
            stack(speeds_moved, 0), stack(speeds_moved, 1), grid, stack(warps, 0), stack(warps, 1)
        )
