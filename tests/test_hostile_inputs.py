"""Hostile and careless input: no file runs code, no option fails after the work, nothing is lost.

Each test names the case of issue 13 it keeps from coming back.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechrnn.audio_io import AudioError, read_audio
from speechrnn.cli import RUN_VERSION_ENV, reserve_run_version, run_version
from speechrnn.data import AudioFolderDataModule, SequenceDataModule
from speechrnn.data.corpora.folder import read_manifest
from speechrnn.data.corpora.sequences import load_npz, save_npz
from speechrnn.data.storage.feature_cache import MemmapFeatureCache
from speechrnn.errors import ConfigError, UserInputError, run_entry_point
from speechrnn.fit import main as fit
from speechrnn.io import CheckpointError, atomic_write_json, read_checkpoint, remove_stale_builds
from speechrnn.predict import main as predict
from speechrnn.stages import summarise_run
from tests.conftest import chirp, write_corpus

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this creates ``marker``: the proof that a file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def fit_args(manifest: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--data", "AudioFolderDataModule", "--data.manifest", str(manifest),
        "--data.cache_dir", str(tmp_path / "cache"), "--data.batch_size", "8", "--model.hidden_size", "8",
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "1", *extra,
    ]  # fmt: skip


def caches(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "cache"
    return sorted(folder.iterdir()) if folder.exists() else []


# --- 1. a data file runs code ----------------------------------------------------------------------
def test_npz_with_a_pickle_payload_is_refused_and_the_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    np.savez(evil, features=np.array([Payload(marker), Payload(marker)], dtype=object), labels=np.array([0, 1]))
    with pytest.raises(UserInputError, match=r"evil\.npz: holds object arrays.*save_npz"):
        load_npz(evil)
    with pytest.raises(UserInputError, match="object arrays"):
        fit(["--data", "SequenceDataModule", "--data.path", str(evil), "--trainer.default_root_dir", str(tmp_path)])
    assert not marker.exists()


def test_save_npz_writes_the_safe_layout_that_load_npz_reads_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sequences = [rng.standard_normal((int(n), 3)).astype(np.float32) for n in (4, 9, 2)]
    save_npz(tmp_path / "ok.npz", sequences, [0, 1, 0], groups=["a", "b", "a"])
    arrays = load_npz(tmp_path / "ok.npz")
    assert [s.shape for s in arrays["features"]] == [(4, 3), (9, 3), (2, 3)]
    np.testing.assert_array_equal(arrays["features"][1], sequences[1])
    assert arrays["groups"].tolist() == ["a", "b", "a"]


# --- 2. a checkpoint runs code in the pipelines ----------------------------------------------------
def test_pipeline_summary_refuses_a_checkpoint_with_a_payload(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    run = tmp_path / "lightning_logs" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = run / "checkpoints" / "best.ckpt"
    torch.save({"state_dict": {"net.w": torch.zeros(2)}, "extra": Payload(marker)}, checkpoint)
    atomic_write_json(run / "test_metrics.json", {"checkpoint": str(checkpoint), "metrics": {}, "timing": {}})
    with pytest.raises(CheckpointError, match=r"best\.ckpt: refused"):
        summarise_run(run)
    assert not marker.exists()
    torch.save({"state_dict": {"net.w": torch.zeros(2, 3)}}, checkpoint)
    assert summarise_run(run)["parameters"] == 6


def test_a_wav_given_as_checkpoint_is_named_as_not_a_checkpoint(tmp_path: Path, capsys) -> None:
    wav = tmp_path / "clip.wav"
    sf.write(wav, chirp("up", 0.3, 16000, np.random.default_rng(0)), 16000)
    with pytest.raises(CheckpointError, match=r"clip\.wav: not a checkpoint written by speechrnn"):
        read_checkpoint(wav)
    with pytest.raises(SystemExit) as exit_info:
        run_entry_point(lambda: predict(["--ckpt", str(wav), str(wav)]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clip.wav: not a checkpoint written by speechrnn" in err[0]


# --- 3. duplicate manifest rows --------------------------------------------------------------------
def append_rows(manifest: Path, *rows: tuple[str, ...]) -> None:
    with open(manifest, "a", newline="") as handle:
        csv.writer(handle).writerows(rows)


def with_split_column(manifest: Path) -> Path:
    rows = list(csv.reader(manifest.open()))
    speakers = sorted({row[2] for row in rows[1:]})
    split_of = {s: ("test" if i == 0 else "val" if i == 1 else "train") for i, s in enumerate(speakers)}
    out = manifest.with_name("split.csv")
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*rows[0], "split"])
        writer.writerows([*row, split_of[row[2]]] for row in rows[1:])
    return out


def test_a_file_in_two_splits_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    manifest = with_split_column(write_corpus(tmp_path / "corpus", speakers=4, per_class=2))
    first = next(csv.DictReader(manifest.open()))
    append_rows(
        manifest, (first["path"], first["label"], first["speaker"], "train" if first["split"] != "train" else "test")
    )
    with pytest.raises(UserInputError, match=r"lines 2 and 26 list the same file .* different split"):
        read_manifest(manifest)


def test_identical_duplicate_rows_warn_and_count_once(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "corpus", speakers=4, per_class=2)
    first = next(csv.reader(manifest.open().readlines()[1:]))
    append_rows(manifest, tuple(first))
    with pytest.warns(UserWarning, match=r"1 duplicate row\(s\) \(lines \[26\]\)"):
        records = read_manifest(manifest)
    assert len(records) == 24 and len({r.source for r in records}) == 24


def test_manifest_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "corpus", speakers=4, per_class=2)
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    assert len(read_manifest(manifest)) == 24


class ListsOneTwice(SequenceDataModule):
    def load_records(self):
        records = super().load_records()
        return [*records, records[0]]


def test_records_listed_twice_by_any_datamodule_are_an_error() -> None:
    dm = ListsOneTwice.from_arrays([np.ones((3, 2))] * 4, [0, 1, 0, 1])
    with pytest.raises(UserInputError, match="listed more than once.*sequence-0"):
        dm.records  # noqa: B018


# --- 4. late crashes -------------------------------------------------------------------------------
def test_an_empty_test_split_stops_fit_before_the_cache_is_built(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "corpus", speakers=6, per_class=2)
    with pytest.raises(UserInputError, match="test split would have no data; test_fraction is 0.0"):
        fit(fit_args(manifest, tmp_path, "--data.test_fraction", "0"))
    assert caches(tmp_path) == []


def test_max_epochs_zero_is_refused_before_any_work(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "corpus", speakers=6, per_class=2)
    with pytest.raises(ConfigError, match="max_epochs 0 trains nothing"):
        fit(fit_args(manifest, tmp_path, "--trainer.max_epochs", "0"))
    assert caches(tmp_path) == []


def test_an_impossible_option_is_one_line_and_exit_status_2(tmp_path: Path, capsys) -> None:
    manifest = write_corpus(tmp_path / "corpus", speakers=6, per_class=2)
    with pytest.raises(SystemExit) as exit_info:
        run_entry_point(lambda: fit(fit_args(manifest, tmp_path, "--data.batch_size", "0")))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: batch_size must be >= 1, got 0"]


def test_a_single_class_is_named_as_the_data_problem(tmp_path: Path) -> None:
    sequences = [np.ones((3, 2), np.float32)] * 10
    dm = SequenceDataModule.from_arrays(sequences, ["only"] * 10)
    with pytest.raises(UserInputError, match="one class only \\('only'\\)"):
        dm.setup("fit")


# --- 5. on_error=raise after a skip run ------------------------------------------------------------
def test_raise_is_not_silently_skip_when_a_skip_run_built_the_cache(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "corpus", speakers=4, per_class=2)
    (manifest.parent / "up" / "bad.wav").write_bytes(b"not audio")
    append_rows(manifest, ("up/bad.wav", "up", "spk0"))
    AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache", on_error="skip").prepare_data()
    with pytest.raises(AudioError, match=r"bad\.wav: cannot read audio.*earlier run with on_error='skip'"):
        AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache").prepare_data()


# --- 6. leftovers ----------------------------------------------------------------------------------
def test_stale_temporary_cache_folders_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import socket

    target = tmp_path / "corpus-0123456789abcdef"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".{target.name}.tmp-{host}-{int(dead.stdout)}-0badc0de"
    live = tmp_path / f".{target.name}.tmp-{host}-{os.getpid()}-0000beef"
    other = tmp_path / f".other.tmp-{host}-{int(dead.stdout)}-12345678"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "frames.f32").write_bytes(b"\0" * 64)
    assert remove_stale_builds(target) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
    MemmapFeatureCache.build(target, ["a"], [np.ones((2, 3))], 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])


def record_worker(chunk: list[int]) -> list[int]:
    """A slow cache-building job that leaves its process id where the test can find it."""
    Path(os.environ["WORKER_PIDS"], str(os.getpid())).touch()
    time.sleep(0.2)
    return chunk


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_cache_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "from speechrnn.data.storage.feature_cache import map_chunks_with_progress\n"
        "from tests.test_hostile_inputs import record_worker\n"
        "for _ in map_chunks_with_progress(record_worker, list(range(400)), 'x', num_workers=2, chunk_size=1):\n"
        "    pass\n"
    )
    env = {**os.environ, "WORKER_PIDS": str(tmp_path)}
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = [int(p.name) for p in tmp_path.iterdir()]
        assert len(workers) == 2, "the workers never started"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers)
    finally:
        parent.kill()


def test_runs_started_at_once_get_their_own_version_folder(tmp_path: Path) -> None:
    (tmp_path / "lightning_logs" / "version_3").mkdir(parents=True)
    versions: list[int] = []
    threads = [threading.Thread(target=lambda: versions.append(reserve_run_version(tmp_path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == list(range(4, 12))


def test_ranks_started_by_rank_zero_share_its_version(tmp_path: Path, monkeypatch) -> None:
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    version = run_version(tmp_path)
    assert os.environ[RUN_VERSION_ENV] == str(version)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert run_version(tmp_path) == version
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == [f"version_{version}"]


# --- 7. smaller ------------------------------------------------------------------------------------
def test_an_empty_class_folder_is_an_error_or_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write_corpus(root, speakers=4, per_class=2)
    (root / "ghost").mkdir()
    with pytest.raises(UserInputError, match=r"class folder\(s\) without audio files: \['ghost'\]"):
        AudioFolderDataModule(root=root).records  # noqa: B018
    with pytest.warns(UserWarning, match="ghost"):
        records = AudioFolderDataModule(root=root, on_error="skip").records
    assert "ghost" not in {r.label for r in records}


def test_broken_and_looping_links_are_reported_not_dropped(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write_corpus(root, speakers=4, per_class=2)
    (root / "up" / "dangling.wav").symlink_to(root / "nowhere.wav")
    (root / "up" / "loop.wav").symlink_to(root / "up" / "loop.wav")
    with pytest.raises(AudioError, match=r"dangling\.wav: broken symbolic link"):
        read_audio(root / "up" / "dangling.wav", 16000)
    with pytest.raises(AudioError, match=r"loop\.wav: symbolic link loop"):
        read_audio(root / "up" / "loop.wav", 16000)
    dm = AudioFolderDataModule(root=root, cache_dir=tmp_path / "cache", on_error="skip")
    dm.prepare_data()
    dm.setup("fit")
    assert sorted(Path(s.path).name for s in dm.cache.skipped) == ["dangling.wav", "loop.wav"]


def test_permission_denied_is_named_as_such(tmp_path: Path, monkeypatch) -> None:
    import builtins

    path = tmp_path / "locked.wav"
    sf.write(path, chirp("up", 0.3, 16000, np.random.default_rng(0)), 16000)

    def refuse(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr("speechrnn.audio_io.open", refuse, raising=False)
    with pytest.raises(AudioError, match=r"locked\.wav: permission denied"):
        read_audio(path, 16000)


def corpus_with_long_clip(tmp_path: Path, seconds: float) -> Path:
    manifest = write_corpus(tmp_path / "corpus", speakers=4, per_class=2)
    sf.write(manifest.parent / "up" / "long.wav", chirp("up", seconds, 16000, np.random.default_rng(5)), 16000)
    append_rows(manifest, ("up/long.wav", "up", "spk0"))
    return manifest


def test_max_seconds_raises_skips_or_crops(tmp_path: Path) -> None:
    manifest = corpus_with_long_clip(tmp_path, 3.0)
    with pytest.raises(AudioError, match=r"long\.wav: too long \(3\.0 s, the limit is 1\.0 s"):
        AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "c1", max_seconds=1.0).prepare_data()
    skip = AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "c2", max_seconds=1.0, on_error="skip")
    skip.setup("fit")
    assert [Path(s.path).name for s in skip.cache.skipped] == ["long.wav"]
    crop = AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "c3", max_seconds=1.0, long_clips="crop")
    crop.setup("fit")
    lengths = dict(zip(crop.cache.keys, crop.cache.lengths, strict=True))
    assert lengths[str(manifest.parent / "up" / "long.wav")] == crop.features.num_frames(16000)
    with pytest.raises(ConfigError, match="max_seconds must be > 0"):
        AudioFolderDataModule(manifest=manifest, max_seconds=0)


def test_clips_far_longer_than_the_median_are_listed_in_a_warning(tmp_path: Path) -> None:
    manifest = corpus_with_long_clip(tmp_path, 5.0)
    with pytest.warns(UserWarning, match=r"1 clip\(s\) over 10x the median length.*long\.wav \(5\.0 s\).*max_seconds"):
        AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache").prepare_data()


def test_predict_on_a_folder_without_audio_says_so_and_fails(tmp_path: Path, capsys, monkeypatch) -> None:
    from speechrnn.predict import predict as predict_files

    class NoModel:
        @classmethod
        def from_checkpoint(cls, path: Path, device: str) -> NoModel:
            return cls()

    monkeypatch.setattr("speechrnn.predict.Predictor", NoModel)
    (tmp_path / "empty").mkdir()
    assert predict_files(tmp_path / "x.ckpt", [tmp_path / "empty"]) == 1
    assert "empty: no audio files" in capsys.readouterr().err


def test_a_wrong_first_sequence_is_the_one_blamed() -> None:
    sequences = [np.ones((4, 3), np.float32), *[np.ones((5, 2), np.float32)] * 5]
    dm = SequenceDataModule.from_arrays(sequences, [0, 1] * 3)
    with pytest.raises(ValueError, match=r"^sequence 0: shape \(4, 3\), expected \(T > 0, 2\)"):
        dm.setup("fit")


def test_reports_follow_the_umask_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"acc": 1.0})
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"acc": 1.0}
