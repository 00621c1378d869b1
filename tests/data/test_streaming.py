"""LitData shards: round trip against the source store, batches by the memory-mapped path's rule,
DDP shards (two gloo processes), resume mid-epoch (by hand and through Lightning), the CLI, errors."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from speechrnn.data import SequenceDataModule, ShardedDataModule
from speechrnn.data.storage.bucketing import bucket_batches
from speechrnn.data.storage.shards import (
    ShardFeatureStore,
    ShardIndex,
    StreamingDependencyError,
    import_litdata,
    open_split,
    write_shards,
)
from speechrnn.errors import ConfigError, MissingInputError, UserInputError

pytest.importorskip("litdata")

COUNT = 91  # 63 training clips: one left over for two processes
BATCH = 4
WINDOW_BATCHES = 3  # 12 clips per length-sorted window: several windows per epoch


def make_source(seed: int = 1) -> SequenceDataModule:
    rng = np.random.default_rng(7)
    sequences = [rng.standard_normal((int(rng.integers(2, 40)), 5)).astype(np.float32) for _ in range(COUNT)]
    groups = [f"subject{i % 13}" for i in range(COUNT)]
    return SequenceDataModule.from_arrays(sequences, [f"class{i % 3}" for i in range(COUNT)], groups=groups,
                                          batch_size=BATCH, seed=seed)  # fmt: skip


@pytest.fixture(scope="module")
def source() -> SequenceDataModule:
    datamodule = make_source()
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="module")
def shards(source: SequenceDataModule, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shards") / "corpus"
    write_shards(make_source(), path)
    return path


def sharded(path: Path | str, **kwargs) -> ShardedDataModule:
    datamodule = ShardedDataModule(str(path), batch_size=BATCH, seed=1, **kwargs)
    datamodule.bucket_size_multiplier = WINDOW_BATCHES
    datamodule.setup()
    return datamodule


def source_order(source: SequenceDataModule) -> np.ndarray:
    """Source store index of each shard index (shards number clips split by split)."""
    return np.concatenate([source.splits[split] for split in ("train", "val", "test")])


def indices(loader) -> list[list[int]]:
    return [batch[3].tolist() for batch in loader]


def test_shards_round_trip_the_source_store(source: SequenceDataModule, shards: Path) -> None:
    index = ShardIndex.read(shards)
    assert index.counts == {split: len(source.splits[split]) for split in ("train", "val", "test")}
    assert (index.feature_dim, index.task, index.class_names) == (5, "classification", source.class_names)
    order = source_order(source)
    store = ShardFeatureStore(index)
    assert len(store) == COUNT
    np.testing.assert_array_equal(store.lengths, source.store.lengths[order])
    for position, original in enumerate(order):
        np.testing.assert_array_equal(store[position], source.store[original])
    datamodule = sharded(shards)
    np.testing.assert_array_equal(datamodule.targets(), source.targets()[order])
    assert datamodule.data_config == source.data_config  # classes, statistics: checkpoints match
    assert datamodule.record_of(0).speaker == source.record_of(int(order[0])).speaker
    assert datamodule.record_of(COUNT - 1).split == "test"
    item = open_split(index, "test")[2]
    record = source.record_of(int(order[index.offset("test") + 2]))
    assert (bytes(item["speaker"]).decode(), bytes(item["source"]).decode()) == (record.speaker, record.source)
    assert item["index"] == index.offset("test") + 2 and item["length"] == len(item["features"])


@pytest.mark.parametrize("max_frames", [None, 60])
def test_the_memmap_sampler_cuts_its_order_by_the_shared_bucket_rule(max_frames: int | None) -> None:
    from speechrnn.data import BucketBatchSampler

    lengths = np.random.default_rng(3).integers(2, 40, size=101)
    sampler = BucketBatchSampler(lengths, BATCH, max_frames=max_frames, seed=5, bucket_size_multiplier=WINDOW_BATCHES)
    sampler.set_epoch(2)
    order = np.random.default_rng([5, 2]).permutation(len(lengths))  # the sampler's order for seed 5, epoch 2
    expected = bucket_batches(order, lengths, BATCH * WINDOW_BATCHES, BATCH, max_frames)
    assert sorted(map(sorted, sampler)) == sorted(sorted(batch.tolist()) for batch in expected)


@pytest.mark.parametrize("max_frames", [None, 60])
def test_training_batches_follow_the_bucket_rule_on_litdata_order(
    source: SequenceDataModule, shards: Path, max_frames: int | None
) -> None:
    """Equal to the memory-mapped path's batches means: for the clip order LitData streams, the
    batches (as sets of clips) are :func:`bucket_batches` of it, the rule BucketBatchSampler applies
    to its own order (test above); every training clip comes once per epoch; padded features equal
    the source store's clips, normalised with the same statistics."""
    from litdata import StreamingDataLoader

    datamodule = sharded(shards, max_frames=max_frames)
    loader = datamodule.dataloader("train")
    batches = list(loader)
    stream = StreamingDataLoader(loader.source, batch_size=1, collate_fn=lambda items: items[0], shuffle=True)
    stream.current_epoch = 0
    order = np.array([item["index"] for item in stream])
    lengths = datamodule.store.lengths
    window = BATCH * WINDOW_BATCHES
    expected = bucket_batches(order, lengths, window, BATCH, max_frames)
    assert sorted(map(sorted, (b[3].tolist() for b in batches))) == sorted(map(sorted, (b.tolist() for b in expected)))
    assert sorted(i for b in batches for i in b[3].tolist()) == list(range(len(source.splits["train"])))
    order_in_source = source_order(source)
    for batch in batches[:5]:
        assert max_frames is None or len(batch[1]) == 1 or len(batch[1]) * int(batch[1].max()) <= max_frames
        originals = order_in_source[batch[3].numpy()]
        reference = source.collate()([(source.store[j], source.targets()[j], int(j)) for j in originals])
        torch.testing.assert_close(batch[0], reference[0], rtol=0, atol=0)
        assert torch.equal(batch[1], reference[1]) and torch.equal(batch[2], reference[2])
    if max_frames is None:
        assert len(loader) == len(batches) == -(-len(source.splits["train"]) // BATCH)
    else:
        with pytest.raises(TypeError):
            len(loader)


def test_evaluation_reads_every_clip_once_in_storage_windows(source: SequenceDataModule, shards: Path) -> None:
    datamodule = sharded(shards)
    for split in ("val", "test"):
        loader = datamodule.dataloader(split)
        seen = [i for batch in indices(loader) for i in batch]
        offset = datamodule.index.offset(split)
        assert sorted(seen) == list(range(offset, offset + len(source.splits[split])))
        assert len(loader) == len(indices(loader)) and indices(loader) == indices(loader)  # not shuffled


@pytest.mark.parametrize("max_frames, stop", [(None, 5), (None, 0), (None, 6), (60, 7)])
def test_a_saved_position_resumes_the_epoch_with_the_remaining_batches(
    shards: Path, max_frames: int | None, stop: int
) -> None:
    uninterrupted = sharded(shards, max_frames=max_frames).dataloader("train")
    epochs = [indices(uninterrupted) for _ in range(3)]
    first = sharded(shards, max_frames=max_frames).dataloader("train")
    assert indices(first) == epochs[0]
    running = iter(first)
    head = [next(running)[3].tolist() for _ in range(stop)]
    state = json.loads(json.dumps(first.state_dict()))  # plain data, as checkpoints need
    resumed = sharded(shards, max_frames=max_frames).dataloader("train")
    resumed.load_state_dict(state)
    assert head + indices(resumed) == epochs[1]
    assert indices(resumed) == epochs[2]


def test_resume_refuses_other_batching_settings(shards: Path) -> None:
    state = sharded(shards).dataloader("train").state_dict()
    other = ShardedDataModule(str(shards), batch_size=8, seed=1)
    other.setup()
    with pytest.raises(ValueError, match="batch_size 4 -> 8"):
        other.dataloader("train").load_state_dict(state)


def test_a_missing_or_half_written_folder_is_named(tmp_path: Path, shards: Path) -> None:
    with pytest.raises(MissingInputError, match=f"{tmp_path / 'nowhere'}: not a finished shard folder.*empty"):
        sharded(tmp_path / "nowhere")
    half = tmp_path / "half"
    (half / "train").mkdir(parents=True)
    (half / "train" / "chunk-0-0.bin").write_bytes((shards / "train" / "chunk-0-0.bin").read_bytes())
    with pytest.raises(MissingInputError, match=f"{half}: not a finished shard folder.*half-written"):
        sharded(half)
    (half / "index.json").write_text("{}")
    with pytest.raises(UserInputError, match=f"{half / 'index.json'}: shard format None"):
        sharded(half)


def test_writing_refuses_an_existing_folder_and_per_step_targets(tmp_path: Path, shards: Path) -> None:
    with pytest.raises(ConfigError, match=f"{shards}: already exists"):
        write_shards(make_source(), shards)
    steps = SequenceDataModule.from_arrays([np.zeros((3, 2), np.float32)] * 6, targets=[np.zeros(3, np.int64)] * 6,
                                           task="frame_classification")  # fmt: skip
    with pytest.raises(ConfigError, match="one target per clip"):
        write_shards(steps, tmp_path / "steps")
    assert not (tmp_path / "steps").exists()


def test_a_frame_budget_needs_max_steps(shards: Path) -> None:
    from pytorch_lightning import Trainer

    datamodule = ShardedDataModule(str(shards), max_frames=60)
    datamodule.trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False)
    with pytest.raises(ConfigError, match="--trainer.max_steps"):
        datamodule.setup("fit")


def test_missing_litdata_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litdata", None)
    with pytest.raises(StreamingDependencyError, match=r'pip install "speechrnn\[streaming\]"'):
        import_litdata()


def test_help_documents_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    import jsonargparse

    import speechrnn.cli  # noqa: F401  (its parsing settings read field docstrings)

    monkeypatch.setenv("COLUMNS", "200")
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(ShardedDataModule, "data")
    options = dict(re.findall(r"^  --data\.(\S+)(?: \S+)?\s+(.*)$", parser.format_help(), re.M))
    assert {"path", "cache_dir", "storage_options", "batch_size", "max_frames", "num_workers", "seed"} <= set(options)
    assert [option for option, text in options.items() if text.startswith("(type:")] == []
    assert "val_fraction" not in options  # the splits were fixed when the shards were built


class _Interrupted(Exception):
    pass


def _fit(shards: Path, tmp_path: Path, max_frames: int | None, stop_at: int | None = None, ckpt: Path | None = None):
    """Batches seen per epoch by a two-epoch fit; with ``stop_at``, a checkpoint at that step's end
    (as ModelCheckpoint writes one) and an interruption; with ``ckpt``, resumed from it."""
    from pytorch_lightning import Callback, Trainer

    from speechrnn import RNNClassifier

    seen: dict[int, list[list[int]]] = {}

    class Watch(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            seen.setdefault(trainer.current_epoch, []).append(batch[3].tolist())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == stop_at:
                trainer.save_checkpoint(tmp_path / "interrupted.ckpt")
                raise _Interrupted

    datamodule = sharded(shards, max_frames=max_frames)
    datamodule.store = None  # Lightning sets it up
    model = RNNClassifier(datamodule.feature_dim, datamodule.num_classes, hidden_size=8,
                          class_names=datamodule.class_names)  # fmt: skip
    trainer = Trainer(max_epochs=2, max_steps=-1 if max_frames is None else 1000, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, callbacks=[Watch()], default_root_dir=tmp_path)  # fmt: skip
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
    except _Interrupted:
        pass
    return seen


@pytest.mark.parametrize("max_frames", [None, 60])
def test_lightning_resumes_mid_epoch_with_exactly_the_remaining_batches(
    shards: Path, tmp_path: Path, max_frames: int | None
) -> None:
    """Killed during epoch 2 after a checkpoint and resumed from it, training sees the rest of that
    epoch, and nothing else, in the uninterrupted run's order (with a frame budget Lightning fetches
    a batch ahead: the saved position counts the batches trained on, not the one fetched)."""
    full = _fit(shards, tmp_path, max_frames)
    stop = len(full[0]) + 3
    before = _fit(shards, tmp_path, max_frames, stop_at=stop)
    after = _fit(shards, tmp_path, max_frames, ckpt=tmp_path / "interrupted.ckpt")
    assert before[0] == full[0] and len(before[1]) == 3
    assert list(after) == [1] and before[1] + after[1] == full[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ddp_worker(rank: int, world: int, shards: str, port: int, out: str) -> None:
    """One of two gloo processes: epochs, an interrupted and resumed epoch (every process loads rank
    0's saved position, as from a checkpoint), and the evaluation splits, written to ``out/rank.json``."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    result = {}
    for max_frames in (None, 60):
        uninterrupted = sharded(shards, max_frames=max_frames).dataloader("train")
        epochs = [indices(uninterrupted) for _ in range(2)]
        interrupted = sharded(shards, max_frames=max_frames).dataloader("train")
        indices(interrupted)
        running = iter(interrupted)
        head = [next(running)[3].tolist() for _ in range(5)]
        saved = [interrupted.state_dict()]
        torch.distributed.broadcast_object_list(saved, src=0)
        resumed = sharded(shards, max_frames=max_frames).dataloader("train")
        resumed.load_state_dict(saved[0])
        result[str(max_frames)] = {
            "epochs": epochs, "head": head, "rest": indices(resumed),
            "length": None if max_frames else len(uninterrupted),
        }  # fmt: skip
    datamodule = sharded(shards)
    result["val"], result["test"] = indices(datamodule.dataloader("val")), indices(datamodule.dataloader("test"))
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_share_the_epoch_and_resume_it(source: SequenceDataModule, shards: Path, tmp_path: Path) -> None:
    """Two gloo processes: training shards are disjoint and hold every clip but the one left over
    (63 for 2, a different one each epoch), with equal step counts (under a frame budget too); an
    epoch interrupted and resumed from rank 0's position gives each process its remaining batches;
    validation and test count every clip exactly once."""
    import torch.multiprocessing as mp

    mp.start_processes(_ddp_worker, args=(2, str(shards), _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    train = len(source.splits["train"])
    left_over = []
    for max_frames in ("None", "60"):
        runs = [rank[max_frames] for rank in ranks]
        for epoch in range(2):
            shards_seen = [{i for batch in run["epochs"][epoch] for i in batch} for run in runs]
            assert len(runs[0]["epochs"][epoch]) == len(runs[1]["epochs"][epoch])
            assert not shards_seen[0] & shards_seen[1]
            assert len(shards_seen[0]) == len(shards_seen[1]) == train // 2
            left_over.append(set(range(train)) - shards_seen[0] - shards_seen[1])
        assert runs[0]["epochs"][0] != runs[0]["epochs"][1]  # reshuffled
        for run in runs:
            assert run["head"] + run["rest"] == run["epochs"][1]
            assert run["length"] in (None, len(run["epochs"][0]))
    assert left_over[0] != left_over[1]  # the clip left over changes with the epoch
    for split in ("val", "test"):
        seen = sorted(i for rank in ranks for batch in rank[split] for i in batch)
        offset = ShardIndex.read(shards).offset(split)
        assert seen == list(range(offset, offset + len(source.splits[split])))


def test_pipeline_builds_shards_from_audio_and_fit_trains_and_tests_on_them(tiny_corpus: Path, tmp_path: Path) -> None:
    """``speechrnn build-cache --format litdata`` writes the audio DataModule's own cached features;
    ``speechrnn.fit --data ShardedDataModule`` trains, tests and reports from the shards alone."""
    import yaml

    from speechrnn.build_cache import main as build_cache
    from speechrnn.data import AudioFolderDataModule
    from speechrnn.features import FeatureSettings
    from speechrnn.fit import main

    cache = tmp_path / "cache"
    config = tmp_path / "audio.yaml"
    init = {"manifest": str(tiny_corpus), "cache_dir": str(cache), "features": {"normalize": "dataset"}}
    data = {"class_path": "speechrnn.data.AudioFolderDataModule", "init_args": init}
    config.write_text(yaml.safe_dump({"data": data}))
    output = tmp_path / "shards"
    build_cache([str(config), "--workers", "0", "--format", "litdata", "--output", str(output)])

    audio = AudioFolderDataModule(manifest=tiny_corpus, cache_dir=cache, features=FeatureSettings(normalize="dataset"))
    audio.setup("fit")
    datamodule = sharded(output)
    assert datamodule.data_config == audio.data_config  # feature settings and statistics travel with the shards
    order = source_order(audio)
    for position in (0, len(order) - 1):
        np.testing.assert_array_equal(datamodule.store[position], audio.store[int(order[position])])
        assert datamodule.record_of(position).source == audio.record_of(int(order[position])).source

    runs = tmp_path / "runs"
    metrics = main(["--data", "ShardedDataModule", "--data.path", str(output), "--data.batch_size", "8",
                    "--model.hidden_size", "8", "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(runs),
                    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])  # fmt: skip
    report = json.loads((runs / "lightning_logs" / "version_0" / "report_test" / "report.json").read_text())
    assert report["examples"] == len(audio.splits["test"]) and "test/acc" in metrics


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket on a local S3-compatible server (moto), reached over plain http on 127.0.0.1."""
    server_module = pytest.importorskip("moto.server")
    import boto3
    import litdata.streaming.downloader as downloader

    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    # LitData's object-store client refuses http; real buckets are https.
    options = {**downloader._OBSTORE_CLIENT_OPTIONS, "allow_http": True}
    monkeypatch.setattr(downloader, "_OBSTORE_CLIENT_OPTIONS", options)
    boto3.client("s3").create_bucket(Bucket="corpora")
    yield "s3://corpora"
    server.stop()


def test_shards_in_a_bucket_round_trip_and_stream(source: SequenceDataModule, s3_bucket: str, tmp_path: Path) -> None:
    url = f"{s3_bucket}/synthetic"
    with pytest.raises(MissingInputError, match=f"{url}: not a finished shard folder"):
        ShardIndex.read(url)
    write_shards(make_source(), url)
    with pytest.raises(ConfigError, match="already holds shards"):
        write_shards(make_source(), url)
    datamodule = sharded(url, cache_dir=str(tmp_path / "chunks"))
    assert datamodule.data_config == source.data_config
    train = [i for batch in indices(datamodule.dataloader("train")) for i in batch]
    assert sorted(train) == list(range(len(source.splits["train"])))
    order = source_order(source)
    np.testing.assert_array_equal(datamodule.store[COUNT - 1], source.store[int(order[-1])])


@pytest.mark.slow
def test_two_process_fit_on_shards_tests_every_clip_once(shards: Path, tmp_path: Path) -> None:
    """``speechrnn.fit`` under DDP (gloo) with a frame budget: the processes agree on each window's
    batch count, and the reduced test accuracy equals one process's evaluation of the checkpoint."""
    import subprocess

    from speechrnn import RNNClassifier
    from speechrnn.split_predictions import predict_split

    args = ["--data", "ShardedDataModule", "--data.path", str(shards), "--data.batch_size", "4",
            "--data.max_frames", "60", "--trainer.max_steps", "40", "--trainer.max_epochs", "2",
            "--model.hidden_size", "8", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
            "--trainer.strategy", "ddp", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    result = subprocess.run([sys.executable, "-m", "speechrnn.fit", *args], capture_output=True, text=True,
                            timeout=600, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    logged = json.loads((tmp_path / "lightning_logs" / "version_0" / "test_metrics.json").read_text())
    model = RNNClassifier.load_from_checkpoint(logged["checkpoint"], map_location="cpu")
    targets, probabilities, *_ = predict_split(model, sharded(shards), "test")
    assert len(targets) == ShardIndex.read(shards).counts["test"]
    assert logged["metrics"]["test/acc"] == pytest.approx(float((probabilities.argmax(1) == targets).mean()), abs=1e-6)
