"""Shipped configs parse against the entry point; pipeline stages run once and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from speechrnn.cli import SpeechRNNCLI
from speechrnn.stages import Pipeline, markdown_table, prepare

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "pipelines" / "configs").glob("*.yaml"))
CPU = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.devices", "1"]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_config_parses_and_instantiates(config: Path, tmp_path: Path, tiny_corpus: Path) -> None:
    data = yaml.safe_load(config.read_text())["data"]
    # a recipe for the user's own corpus names a placeholder manifest: give it a real one
    own = ["--data.manifest", str(tiny_corpus)] if data["class_path"].endswith("AudioFolderDataModule") else []
    cli = SpeechRNNCLI(args=["--config", str(config), *CPU, "--trainer.default_root_dir", str(tmp_path), *own])
    assert type(cli.datamodule).__name__ == data["class_path"].rsplit(".", 1)[1]
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    assert cli.model.hparams.input_size == cli.datamodule.feature_dim


def test_pipeline_stages_run_once_and_are_skipped_after(tiny_corpus: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"class_path": "speechrnn.data.AudioFolderDataModule",
                 "init_args": {"manifest": str(tiny_corpus), "cache_dir": str(tmp_path / "cache"), "batch_size": 8}},
        "model": {"hidden_size": 8},
        "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
    }))  # fmt: skip
    pipeline = Pipeline(tmp_path / "work")
    prepared = pipeline.stage("prepare", lambda: prepare(config, workers=0))
    assert prepared["examples"]["train"] > 0 and Path(prepared["cache"]).is_dir()
    first = pipeline.fit("fit-a", config, ["--model.cell", "lstm"])
    assert first["parameters"] > 0 and first["epochs"] == 1 and first["report"]["examples"] == 6
    again = pipeline.fit("fit-a", config, ["--model.cell", "lstm"])
    assert again == first
    assert len(list((tmp_path / "work" / "fit-a").glob("lightning_logs/version_*"))) == 1
    table = pipeline.write_table("report", ["model", "acc"], [["lstm", first["metrics"]["test/acc"]]], "t")
    assert "| lstm |" in table.read_text()


def test_markdown_table_formats_floats() -> None:
    assert markdown_table(["a", "b"], [["x", 0.123456]]) == "| a | b |\n|---|---|\n| x | 0.1235 |\n"


@pytest.mark.slow
def test_seed_systems_run_end_to_end_and_report_each_metric(tmp_path: Path) -> None:
    from pipelines.seeds import main as seeds

    seeds(quick=True, workdir=tmp_path / "seeds")
    rows = [line for line in (tmp_path / "seeds" / "report.md").read_text().splitlines() if line.startswith("| ")]
    values = {row.split(" | ")[0].lstrip("| "): float(row.split(" | ")[2]) for row in rows[1:]}
    assert len(values) == 4 and all(math.isfinite(v) for v in values.values()), values
    assert values["next character (vanilla RNN, TBPTT 32)"] < 4.2  # below the text's unigram entropy (4.13)


@pytest.mark.slow
def test_vad_pipeline_reports_frames_plots_a_clip_and_streams_like_offline(tmp_path: Path) -> None:
    from pipelines.vad import main as vad

    config = tmp_path / "vad.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"class_path": "speechrnn.data.SyntheticCommandsDataModule",
                 "init_args": {"root": str(tmp_path / "corpus"), "num_speakers": 5, "repetitions": 1,
                               "val_speakers": 1, "test_speakers": 1, "generation_workers": 1,
                               "cache_dir": str(tmp_path / "cache"), "voice_activity": True, "batch_size": 16,
                               "features": {"normalize": "dataset"}}},
        "model": {"cell": "gru", "hidden_size": 16, "num_layers": 1, "bidirectional": False},
        "trainer": {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False},
    }))  # fmt: skip
    streaming = vad(["--config", str(config), "--workdir", str(tmp_path / "work"), "--chunk-frames", "7"])
    assert streaming["clips"] == 15 and streaming["same_decisions"] == 1.0
    assert streaming["max_abs_logit_difference"] < 1e-4
    assert (tmp_path / "work" / "vad_clip.png").read_bytes()[:4] == b"\x89PNG"
    rows = [line for line in (tmp_path / "work" / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| causal GRU (frames)",
        "| energy threshold (c0, tuned on train)",
    ]


@pytest.mark.slow
def test_fsdd_pipeline_adapts_each_held_out_speaker_and_reports_both(tmp_path: Path) -> None:
    from pipelines.fsdd import main as fsdd
    from tests.data.test_fsdd import write_fsdd

    recordings = write_fsdd(tmp_path / "recordings", speakers=("alice", "bob", "carol"), indices=4)
    config = tmp_path / "loso.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"class_path": "speechrnn.data.FSDDDataModule",
                 "init_args": {"root": str(recordings), "cache_dir": str(tmp_path / "cache"), "split": "speaker",
                               "test_speakers": ["alice"], "batch_size": 16, "on_device_features": True,
                               "features": {"n_mfcc": 13, "deltas": 1, "normalize": "speaker"},
                               "augment": {"speed_factors": [0.9, 1.0, 1.1], "vtln_warp": 0.1}}},
        # confident enough for some clips to pass adapt's threshold
        "model": {"hidden_size": 16, "num_layers": 1, "dropout": 0.0, "label_smoothing": 0.0, "lr": 0.03},
        "trainer": {"max_epochs": 8, "enable_progress_bar": False, "enable_model_summary": False},
    }))  # fmt: skip
    work = tmp_path / "work"
    args = ["--config", str(config), "--loso-config", str(config), "--workdir", str(work), "--skip-official"]
    report = fsdd([*args, "--speakers", "bob", "--", *CPU])
    rows = [line.split(" | ") for line in report.read_text().splitlines() if line.startswith("| leave")]
    assert [row[0] for row in rows] == [
        "| leave bob out", "| leave-one-speaker-out mean", "| leave-one-speaker-out worst",
        "| leave-one-speaker-out worst after adaptation",
    ]  # fmt: skip
    adaptation = json.loads((work / "adapt-loso-bob" / "adaptation.json").read_text())
    fitted = json.loads((work / "fit-loso-bob.done.json").read_text())["result"]["metrics"]["test/acc"]
    assert float(rows[0][2]) == float(rows[1][2]) == pytest.approx(fitted, abs=1e-4)
    assert float(rows[0][2]) == pytest.approx(adaptation["accuracy_before"], abs=1e-4)  # the same model
    for row in (rows[0], rows[1], rows[3]):
        assert float(row[3].rstrip(" |")) == pytest.approx(adaptation["accuracy_after"], abs=1e-4)
    assert adaptation["rounds"][0]["clips"] == 40  # bob's 10 digits x 4 recordings, all of them considered
    assert (work / "confusion-bob.csv").is_file() and (work / "confusion-bob-adapted.csv").is_file()
    assert fsdd([*args, "--speakers", "bob", "--", *CPU]).read_text() == report.read_text()  # stages skipped
