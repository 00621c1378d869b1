from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from speechrnn.data import AudioFolderDataModule, MemmapFeatureCache, audio_base
from speechrnn.data.storage.feature_cache import ConcatenatedFeatureStore, cache_key
from speechrnn.features import FeatureSettings


def cache_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_cache_is_built_once_and_reused(tiny_corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = AudioFolderDataModule(manifest=tiny_corpus, cache_dir=cache)
    first.setup("fit")
    [folder] = cache_dirs(cache)
    stamp = (folder / "frames.f32").stat().st_mtime_ns
    second = AudioFolderDataModule(manifest=tiny_corpus, cache_dir=cache)
    second.setup("fit")
    assert cache_dirs(cache) == [folder]
    assert (folder / "frames.f32").stat().st_mtime_ns == stamp
    assert isinstance(second.store.frames, np.memmap)
    np.testing.assert_array_equal(first.store[5], second.store[5])


def test_changing_a_setting_or_a_file_makes_a_new_cache(tiny_corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    AudioFolderDataModule(manifest=tiny_corpus, cache_dir=cache).setup("fit")
    AudioFolderDataModule(manifest=tiny_corpus, cache_dir=cache, features=FeatureSettings(n_mfcc=20)).setup("fit")
    assert len(cache_dirs(cache)) == 2
    some_file = next(tiny_corpus.parent.glob("up/*.wav"))
    os.utime(some_file, ns=(1, 1))
    AudioFolderDataModule(manifest=tiny_corpus, cache_dir=cache).setup("fit")
    assert len(cache_dirs(cache)) == 3


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    def results():
        yield np.ones((3, 2), np.float32)
        raise KeyboardInterrupt

    target = tmp_path / "cache" / "corpus-abc"
    with pytest.raises(KeyboardInterrupt):
        MemmapFeatureCache.build(target, ["a", "b"], results(), feature_dim=2)
    assert not target.exists() and not MemmapFeatureCache.exists(target)
    assert list((tmp_path / "cache").iterdir()) == []


def test_memmap_cache_round_trip_and_skipped_rows(tmp_path: Path) -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((1, 2), np.float32)]
    error = ValueError("broken")
    cache = MemmapFeatureCache.build(tmp_path / "c", ["a", "bad", "b"], [arrays[0], error, arrays[1]], 2)
    assert cache.keys == ["a", "b"] and list(cache.lengths) == [3, 1]
    np.testing.assert_array_equal(cache[0], arrays[0])
    assert [(s.path, s.reason) for s in cache.skipped] == [("bad", "broken")]
    in_memory = ConcatenatedFeatureStore.from_arrays(arrays)
    np.testing.assert_array_equal(in_memory[1], arrays[1])


def test_cache_key_depends_on_settings_and_files(tmp_path: Path) -> None:
    file = tmp_path / "x.wav"
    file.write_bytes(b"1")
    key = cache_key({"a": 1}, [file])
    assert key == cache_key({"a": 1}, [file])
    assert key != cache_key({"a": 2}, [file])
    file.write_bytes(b"22")
    assert key != cache_key({"a": 1}, [file])


def test_batched_extraction_equals_each_file_alone(tmp_path: Path) -> None:
    """The cache featurises files in padded batches; each result must equal that file featurised
    alone by the front end, in the caller's order, with bad files raised or kept in their place."""
    import soundfile as sf
    import torch

    from speechrnn.audio_io import AudioError, read_audio
    from speechrnn.data.audio_base import extract_features_batch
    from speechrnn.features import MFCCFrontend
    from tests.conftest import chirp

    rng = np.random.default_rng(0)
    paths = []
    for n, seconds in enumerate([0.9, 0.12, 0.5, 0.13, 2.0, 0.3, 0.31]):
        paths.append(str(tmp_path / f"clip{n}.wav"))
        sf.write(paths[-1], chirp("up", seconds, 8000, rng), 8000)
    bad = tmp_path / "empty.wav"
    sf.write(bad, np.zeros((0,), np.float32), 8000)
    settings = FeatureSettings(sample_rate=8000, deltas=1)
    frontend = MFCCFrontend(settings)

    with_bad = paths[:3] + [str(bad)] + paths[3:]
    got = extract_features_batch(with_bad, settings, skip_errors=True, max_samples=6000)
    assert isinstance(got[3], AudioError) and "empty.wav" in str(got[3])
    for path, features in zip(paths, got[:3] + got[4:], strict=True):
        with torch.inference_mode():
            alone, _ = frontend(read_audio(path, 8000, settings.win_length)[None])
        assert features.shape == alone[0].shape
        np.testing.assert_allclose(features, alone[0].numpy(), rtol=0, atol=1e-4)
    with pytest.raises(AudioError, match="empty.wav"):
        extract_features_batch(with_bad, settings)


@pytest.mark.parametrize("on_device_features", [False, True])
def test_cache_built_by_worker_processes_equals_one_process(
    tiny_corpus: Path, tmp_path: Path, on_device_features: bool
) -> None:
    caches = []
    for workers in (0, 2):
        dm = AudioFolderDataModule(
            manifest=tiny_corpus,
            cache_dir=tmp_path / f"cache{workers}",
            cache_workers=workers,
            on_device_features=on_device_features,
        )
        dm.prepare_data()
        caches.append(MemmapFeatureCache(cache_dirs(tmp_path / f"cache{workers}")[0]))
    single, pooled = caches
    assert single.keys == pooled.keys and len(single) == 36
    np.testing.assert_array_equal(single.offsets, pooled.offsets)
    np.testing.assert_allclose(np.asarray(single.frames), np.asarray(pooled.frames), rtol=0, atol=1e-5)


def test_default_cache_workers_use_every_core_only_for_a_large_corpus(
    tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from speechrnn.data.storage import feature_cache

    monkeypatch.setattr(feature_cache, "usable_cores", lambda: 2)
    monkeypatch.setattr(feature_cache.multiprocessing, "get_start_method", lambda allow_none=False: "fork")
    assert feature_cache.default_cache_workers(feature_cache.PARALLEL_CACHE_FILES - 1) == 0
    assert feature_cache.default_cache_workers(feature_cache.PARALLEL_CACHE_FILES) == 2
    assert feature_cache.default_cache_workers(10**6) == 2
    monkeypatch.setattr(feature_cache.multiprocessing, "get_start_method", lambda allow_none=False: "spawn")
    assert feature_cache.default_cache_workers(10**6) == 0
    monkeypatch.setattr(feature_cache, "usable_cores", lambda: 1)
    assert feature_cache.default_cache_workers(10**6) == 0

    pools = []
    real_map = feature_cache.map_chunks_with_progress

    def spy(function, items, description, num_workers=0, chunk_size=64):
        pools.append(num_workers)
        return real_map(function, items, description, num_workers, chunk_size)

    monkeypatch.setattr(audio_base, "map_chunks_with_progress", spy)
    monkeypatch.setattr(audio_base, "default_cache_workers", lambda files: 2 if files >= 36 else 0)
    dm = AudioFolderDataModule(manifest=tiny_corpus, cache_dir=tmp_path / "auto")
    dm.prepare_data()
    assert pools == [2]  # the 36 clips reach the (patched) threshold: built by two processes
    explicit = AudioFolderDataModule(manifest=tiny_corpus, cache_dir=tmp_path / "one", cache_workers=0)
    explicit.prepare_data()
    assert pools == [2, 0]
    pooled, single = (MemmapFeatureCache(cache_dirs(tmp_path / name)[0]) for name in ("auto", "one"))
    np.testing.assert_array_equal(np.asarray(pooled.frames), np.asarray(single.frames))


def test_items_are_read_from_the_file_equal_to_the_map_in_any_process(tmp_path: Path) -> None:
    import pickle

    from torch.utils.data import DataLoader

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((int(n), 3)).astype(np.float32) for n in (5, 1, 9, 4)]
    cache = MemmapFeatureCache.build(tmp_path / "c", ["a", "b", "c", "d"], arrays, 3)
    for i, array in enumerate(arrays):
        item = cache[i]
        np.testing.assert_array_equal(item, array)
        np.testing.assert_array_equal(item, cache.frames[cache.offsets[i] : cache.offsets[i + 1]])
        assert item.flags.writeable and item.dtype == np.float32
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(cache))[2], arrays[2])
    loaded = list(DataLoader(cache, batch_size=None, num_workers=2))
    assert all(np.array_equal(item.numpy(), array) for item, array in zip(loaded, arrays, strict=True))
    reopened = MemmapFeatureCache(tmp_path / "c")
    os.truncate(tmp_path / "c" / "frames.f32", 100)  # cut while open (another process, a full disk)
    with pytest.raises(OSError, match="frames.f32: ends early"):
        reopened[3]
