"""``python -m speechrnn.fit`` end to end on a tiny synthesised corpus, and checkpoint inference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechrnn import RNNClassifier
from speechrnn.features import FeatureSettings
from speechrnn.fit import main
from speechrnn.inference import Predictor
from tests.conftest import chirp


def fit_args(manifest: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--data", "AudioFolderDataModule",
        "--data.manifest", str(manifest),
        "--data.cache_dir", str(tmp_path / "cache"),
        "--data.batch_size", "8",
        "--model.hidden_size", "16",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *extra,
    ]  # fmt: skip


def report_accuracy(run: Path) -> float:
    """Test accuracy of a run as its scikit-learn report computed it."""
    return json.loads((run / "report_test" / "report.json").read_text())["accuracy"]


def test_fit_runs_end_to_end_with_fast_dev_run(tiny_corpus: Path, tmp_path: Path) -> None:
    metrics = main(fit_args(tiny_corpus, tmp_path, "--trainer.fast_dev_run", "true"))
    assert set(metrics) >= {"test/acc", "test/f1", "test/loss"}


def test_fit_writes_run_folder_and_checkpoint_classifies_a_wav(tiny_corpus: Path, tmp_path: Path) -> None:
    main(fit_args(tiny_corpus, tmp_path, "--trainer.max_epochs", "2", "--data.features.normalize", "utterance"))
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert (run / "config.yaml").is_file()
    result = json.loads((run / "test_metrics.json").read_text())
    assert Path(result["checkpoint"]).is_file()
    # torchmetrics during testing and scikit-learn in the report read the same predictions
    assert result["metrics"]["test/acc"] == pytest.approx(report_accuracy(run), abs=1e-6)
    assert list(run.glob("events.out.tfevents.*"))
    checkpoint = run / "checkpoints" / "last.ckpt"

    model = RNNClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    assert model.class_names == ["down", "flat", "up"]
    assert model.data_config["features"]["sample_rate"] == 16000

    wav = tmp_path / "new.wav"
    stereo_44k = np.stack([chirp("up", 0.3, 44100, np.random.default_rng(5))] * 2, axis=1)
    sf.write(wav, stereo_44k, 44100)
    probabilities = Predictor.from_checkpoint(checkpoint).predict_file(wav)
    assert sorted(probabilities) == ["down", "flat", "up"]
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert list(probabilities.values()) == sorted(probabilities.values(), reverse=True)

    # The predictor's features equal the training cache's for a training file.
    from speechrnn.data import AudioFolderDataModule

    dm = AudioFolderDataModule(
        manifest=tiny_corpus, cache_dir=tmp_path / "cache", features=FeatureSettings(normalize="utterance")
    )
    dm.setup("fit")
    predictor = Predictor.from_checkpoint(checkpoint)
    record = dm.record_of(0)
    wave, rate = sf.read(record.source, dtype="float32")
    features, _ = predictor.classifier.frontend(torch.from_numpy(wave.mean(1) if wave.ndim == 2 else wave)[None])
    torch.testing.assert_close(features[0], torch.from_numpy(np.array(dm.store[0])), rtol=1e-4, atol=1e-4)


def test_saved_config_replays(tiny_corpus: Path, tmp_path: Path) -> None:
    main(fit_args(tiny_corpus, tmp_path, "--trainer.max_epochs", "1"))
    config = tmp_path / "runs" / "lightning_logs" / "version_0" / "config.yaml"
    main(["--config", str(config)])
    replay = json.loads((tmp_path / "runs" / "lightning_logs" / "version_1" / "test_metrics.json").read_text())
    first = json.loads((tmp_path / "runs" / "lightning_logs" / "version_0" / "test_metrics.json").read_text())
    assert replay["metrics"] == pytest.approx(first["metrics"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "module,options",
    [("speechrnn.evaluate", ["--ckpt", "--split", "--out", "--data"]),
     ("speechrnn.predict", ["--ckpt", "--top-k", "--format", "FILE_OR_DIR"]),
     ("speechrnn.adapt", ["--ckpt", "--split", "--out", "--adapt.rounds", "--adapt.threshold", "--data"])],
)  # fmt: skip
def test_other_entry_points_have_help(module: str, options: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout


@pytest.mark.slow
def test_help_documents_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "speechrnn.fit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for option in ("--model.cell", "--model.bidirectional", "--data", "--trainer.max_epochs", "--ckpt_path"):
        assert option in result.stdout


def test_training_budget_scales_epochs_with_the_training_split() -> None:
    from speechrnn.callbacks import TrainingBudget

    budget = TrainingBudget(min_steps=1000, min_epochs=10, max_epochs=100)
    assert [budget.epochs_for(n) for n in (7, 66, 3000)] == [100, 16, 10]


def test_unset_max_epochs_gets_a_budget_and_an_explicit_one_is_kept(tiny_corpus: Path, tmp_path: Path) -> None:
    from speechrnn.callbacks import TrainingBudget
    from speechrnn.cli import SpeechRNNCLI

    cli = SpeechRNNCLI(args=fit_args(tiny_corpus, tmp_path))
    budget = next(c for c in cli.trainer.callbacks if isinstance(c, TrainingBudget))
    cli.datamodule.setup("fit")
    cli.trainer.strategy.connect(cli.model)
    cli.trainer._data_connector.attach_datamodule(cli.model, datamodule=cli.datamodule)
    budget.setup(cli.trainer, cli.model, "fit")
    batches = len(cli.datamodule.train_dataloader())
    assert cli.trainer.fit_loop.max_epochs == budget.epochs_for(batches) == min(100, -(-1000 // batches))
    explicit = SpeechRNNCLI(args=fit_args(tiny_corpus, tmp_path, "--trainer.max_epochs", "3"))
    assert explicit.trainer.max_epochs == 3
    assert not any(isinstance(c, TrainingBudget) for c in explicit.trainer.callbacks)


def test_keeping_only_the_latest_epoch_coexists_with_last_ckpt(tiny_corpus: Path, tmp_path: Path) -> None:
    from speechrnn.callbacks import LastCheckpoint
    from speechrnn.cli import SpeechRNNCLI

    cli = SpeechRNNCLI(args=fit_args(tiny_corpus, tmp_path, "--checkpoint.monitor", "null"))
    keys = [c.state_key for c in cli.trainer.checkpoint_callbacks]
    assert len(keys) == 2 == len(set(keys)) and any(isinstance(c, LastCheckpoint) for c in cli.trainer.callbacks)


def test_per_hook_costs_are_cut_without_changing_what_a_checkpoint_holds(tiny_corpus: Path, tmp_path: Path) -> None:
    """The quiet profiler is the default and gives way to one named; cached state keys equal the ones
    Lightning builds (checkpoints resume as before), and early stopping's follows the monitor it picks."""
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.profilers import SimpleProfiler

    from speechrnn.callbacks import AnnealedEarlyStopping, LastCheckpoint, QuietProfiler
    from speechrnn.cli import SpeechRNNCLI

    cli = SpeechRNNCLI(args=fit_args(tiny_corpus, tmp_path))
    assert isinstance(cli.trainer.profiler, QuietProfiler)
    assert cli.trainer.profiler.profile("a") is cli.trainer.profiler.profile("b")
    named = SpeechRNNCLI(args=fit_args(tiny_corpus, tmp_path, "--trainer.profiler", "simple"))
    assert isinstance(named.trainer.profiler, SimpleProfiler)

    last = next(c for c in cli.trainer.callbacks if isinstance(c, LastCheckpoint))
    assert last.state_key == ModelCheckpoint.state_key.fget(last) and last.state_key.startswith("LastCheckpoint{")
    stopping = next(c for c in cli.trainer.callbacks if isinstance(c, AnnealedEarlyStopping))
    before = stopping.state_key
    assert "'monitor': 'val/loss'" in before  # 'auto', resolved when the task is known
    stopping.setup(cli.trainer, cli.model, "fit")
    assert stopping.state_key == EarlyStopping.state_key.fget(stopping) != before
    assert "'monitor': 'val/acc'" in stopping.state_key


@pytest.mark.parametrize(
    "name", ["AudioFolderDataModule", "FSDDDataModule", "SyntheticCommandsDataModule", "SequenceDataModule",
             "SpeechCommandsDataModule"],
)  # fmt: skip
def test_data_help_documents_every_option(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    import jsonargparse

    import speechrnn.cli  # noqa: F401  (its parsing settings read the settings dataclasses' field docstrings)
    import speechrnn.data

    monkeypatch.setenv("COLUMNS", "200")
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(getattr(speechrnn.data, name), "data")
    options = dict(re.findall(r"^  --data\.(\S+)(?: \S+)?\s+(.*)$", parser.format_help(), re.M))
    assert {"batch_size", "seed", "num_workers"} <= set(options), options
    assert [option for option, text in options.items() if text.startswith("(type:")] == []
    if name in ("FSDDDataModule", "SpeechCommandsDataModule", "SyntheticCommandsDataModule"):
        assert "test_fraction" not in options  # these corpora bring their own test split


@pytest.mark.parametrize(
    "name", ["AudioFolderDataModule", "FSDDDataModule", "SequenceDataModule", "ShardedDataModule",
             "SpeechCommandsDataModule", "CharTextDataModule"],
)  # fmt: skip
def test_choosing_a_data_class_gives_its_own_defaults(name: str, capsys) -> None:
    """jsonargparse keeps the values of options the default DataModule shares with the chosen one,
    so a shared option must default alike everywhere (an unknown_fraction of None once reached
    Speech Commands this way)."""
    import jsonargparse

    import speechrnn.data

    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(getattr(speechrnn.data, name), "data")
    own = parser.get_defaults().data
    with pytest.raises(SystemExit):
        main(["--data", name, "--print_config"])
    printed = yaml_load(capsys.readouterr().out)["data"]["init_args"]
    assert {k: v for k, v in printed.items() if k in own and own[k] != v and not isinstance(v, dict)} == {}


def test_field_docstrings_are_read_only_for_help() -> None:
    from speechrnn.cli import shows_help

    assert shows_help(["--data.help", "FSDDDataModule"]) and shows_help(["-h"]) and shows_help(["--print_config"])
    assert not shows_help(["--data", "FSDDDataModule", "--trainer.max_epochs", "1"]) and not shows_help({"a": 1})
    result = subprocess.run(
        [sys.executable, "-m", "speechrnn.fit", "--data.help", "AudioFolderDataModule"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0 and "0: MFCC only; 1: add deltas" in result.stdout


def test_max_steps_that_end_an_epoch_before_validation_still_test_and_report(tiny_corpus: Path, tmp_path: Path) -> None:
    metrics = main(fit_args(tiny_corpus, tmp_path, "--trainer.max_steps", "1"))  # one of the epoch's two batches
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert next((tmp_path / "runs").rglob("report_test/report.json")).is_file()


def test_resuming_with_more_epochs_than_the_one_cycle_schedule_spans_is_refused(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    from speechrnn.errors import ConfigError

    main(fit_args(tiny_corpus, tmp_path, "--trainer.max_epochs", "2"))  # 3 batches an epoch: 6 steps, one cycle
    with pytest.raises(
        ConfigError, match="one-cycle learning-rate schedule ends at step 6, and this run would train to step 12"
    ):
        main(fit_args(tiny_corpus, tmp_path, "--trainer.max_epochs", "4", "--ckpt_path", "last"))
    assert main(fit_args(tiny_corpus, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last"))["test/acc"] >= 0


# --- the speechrnn command --------------------------------------------------------------------
def run_command(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``speechrnn ARGV`` in this process; returns the exit status."""
    from speechrnn import cli
    from speechrnn.__main__ import main as speechrnn

    monkeypatch.setitem(cli.INVOKED_AS, "prefix", cli.INVOKED_AS["prefix"])  # restored after the test
    monkeypatch.setattr(sys, "argv", ["speechrnn", *argv])
    with pytest.raises(SystemExit) as exited:
        speechrnn(argv)
    return exited.value.code or 0


def test_speechrnn_lists_every_command_and_each_has_a_main() -> None:
    import importlib

    from speechrnn.__main__ import COMMANDS

    result = subprocess.run([sys.executable, "-m", "speechrnn", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name, command in COMMANDS.items():
        assert f"  {name} " in result.stdout
        assert callable(importlib.import_module(command.module).main)
    assert {"fit", "evaluate", "predict", "adapt", "export", "generate", "build-cache"} <= set(COMMANDS)


def test_speechrnn_refuses_an_unknown_or_missing_command(monkeypatch, capsys) -> None:
    assert run_command(["trian"], monkeypatch) == 2
    listed = "fit, evaluate, predict, spot, serve, adapt, export, generate, build-cache"
    assert capsys.readouterr().err.strip() == f"error: unknown command 'trian'; the commands are {listed}"
    assert run_command([], monkeypatch) == 2
    assert "commands:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command,options",
    [("evaluate", ["--ckpt", "--split", "--data", "--print_config"]),
     ("predict", ["--ckpt", "--top_k", "FILE_OR_DIR", "--print_config"]),
     ("adapt", ["--ckpt", "--adapt.rounds", "RECORDINGS", "--print_config"]),
     ("export", ["--ckpt", "--out", "--format", "--print_config"]),
     ("generate", ["--ckpt", "--prime", "--temperature", "--print_config"]),
     ("build-cache", ["FIT_CONFIG", "--workers", "--format", "--output", "--print_config"])],
)  # fmt: skip
def test_each_command_has_help_config_and_print_config(command, options, monkeypatch, capsys) -> None:
    assert run_command([command, "--help"], monkeypatch) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: speechrnn {command} ")
    for option in options:
        assert option in shown


def test_print_config_writes_a_config_the_command_reads_back(tmp_path: Path, monkeypatch, capsys) -> None:
    assert run_command(["export", "--ckpt", "a.ckpt", "--out", "a.onnx", "--print_config"], monkeypatch) == 0
    printed = yaml_load(capsys.readouterr().out)
    assert {key: printed[key] for key in ("ckpt", "out", "format", "verify")} == {
        "ckpt": "a.ckpt", "out": "a.onnx", "format": "onnx", "verify": True}  # fmt: skip
    (tmp_path / "export.yaml").write_text(yaml_dump({**printed, "ckpt": str(tmp_path / "missing.ckpt")}))
    assert run_command(["export", "--config", str(tmp_path / "export.yaml")], monkeypatch) == 2
    assert "missing.ckpt" in capsys.readouterr().err  # the config's options reached the command


def yaml_load(text: str):
    import yaml

    return yaml.safe_load(text)


def yaml_dump(data) -> str:
    import yaml

    return yaml.safe_dump(data)


@pytest.mark.parametrize("command", ["fit", "evaluate", "predict", "adapt", "export", "generate", "build-cache"])
def test_a_config_file_that_is_not_yaml_is_one_line_with_status_2(command, tmp_path: Path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert run_command([command, "--config", str(bad)], monkeypatch) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("error: ") and str(bad) in error, error


def test_a_config_value_of_the_wrong_type_is_one_line_naming_the_key(tmp_path: Path, monkeypatch, capsys) -> None:
    bad = tmp_path / "fit.yaml"
    bad.write_text("trainer:\n  max_epochs: many\n")
    assert run_command(["fit", "--config", str(bad)], monkeypatch) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "trainer.max_epochs" in error and "many" in error and str(bad) in error, error


@pytest.mark.parametrize("command", ["evaluate", "adapt"])
def test_a_corrupt_run_config_beside_the_checkpoint_is_one_line(command, tmp_path: Path, monkeypatch, capsys) -> None:
    checkpoint = tmp_path / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    run = tmp_path / "version_0" / "config.yaml"
    run.write_text("data:\n  class_path: [\n")
    assert run_command([command, "--ckpt", str(checkpoint)], monkeypatch) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {run}: the run's config is not valid YAML (line ") and "\n" not in error
    run.write_text("- just\n- a list\n")
    assert run_command([command, "--ckpt", str(checkpoint)], monkeypatch) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {run}: the run's config has no data section; give the data with --data CLASS"
    )


def test_build_cache_composes_fit_configs_and_builds_the_cache_fit_reads(
    tiny_corpus: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import yaml

    corpus = tmp_path / "corpus.yaml"
    corpus.write_text(yaml.safe_dump({"data": {"class_path": "AudioFolderDataModule", "init_args": {
        "manifest": str(tiny_corpus), "cache_dir": str(tmp_path / "first")}}}))  # fmt: skip
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"trainer": {"max_epochs": 1}, "data": {"init_args": {
        "cache_dir": str(tmp_path / "cache"), "features": {"n_mfcc": 20, "deltas": 0}}}}))  # fmt: skip
    assert run_command(["build-cache", str(corpus), str(override), "--workers", "0"], monkeypatch) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["class"] == "AudioFolderDataModule" and sum(built["examples"].values()) > 0
    assert Path(built["cache"]).parent == tmp_path / "cache" and not (tmp_path / "first").exists()
    from speechrnn.data import AudioFolderDataModule
    from speechrnn.features import FeatureSettings

    same = AudioFolderDataModule(
        manifest=tiny_corpus, cache_dir=tmp_path / "cache", features=FeatureSettings(n_mfcc=20, deltas=0)
    )
    same.training_run = True  # as in a fit: the same augmentation and feature path
    same.setup("fit")
    assert str(same.cache.directory) == built["cache"]  # the cache a fit with both configs reads
    missing = tmp_path / "missing.yaml"
    assert run_command(["build-cache", str(corpus), str(missing)], monkeypatch) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {missing}: cannot read the config: ")
