"""The scripts in pipelines/ and benchmarks/ share one command line; pipeline stages run once and
resume; the pipelines run end to end at tiny sizes. (The shipped recipes: tests/test_recipes.py.)"""

from __future__ import annotations

import dataclasses
import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import yaml

from speechrnn.stages import Pipeline, markdown_table, prepare

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    path
    for folder in ("pipelines", "benchmarks")
    for path in (REPO / folder).glob("*.py")
    if 'if __name__ == "__main__":' in path.read_text()
)
CPU = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.devices", "1"]


@pytest.fixture
def pipelines(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipelines' folder first on the path, as when Python runs one of its scripts."""
    monkeypatch.syspath_prepend(str(REPO / "pipelines"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[f"{s.parent.name}/{s.name}" for s in SCRIPTS])
def test_every_script_prints_its_options_and_reads_them_back(
    script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(script.parent))

    def run(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", [str(script), *args])
        with pytest.raises(SystemExit) as exit:
            runpy.run_path(str(script), run_name="__main__")
        assert exit.value.code in (0, None), capsys.readouterr().err
        return capsys.readouterr().out

    assert "--print_config" in run("--help") and "--config" in run("--help")
    printed = run("--print_config")
    (tmp_path / "options.yaml").write_text(printed)
    assert run("--config", str(tmp_path / "options.yaml"), "--print_config") == printed


def test_compare_pipelines_selects_by_name_or_letter_and_sends_a_child_one_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import compare_pipelines as compare
    from common import from_json

    assert [spec.letter for spec in compare.selected("gba")] == ["a", "b", "g"]  # the table's order
    assert compare.selected(["fit", "naive"]) == compare.selected("af")
    with pytest.raises(SystemExit, match="no pipeline 'x'"):
        compare.selected("ax")
    request = compare.Request("nn_gru", 2, compare.Settings(root="/corpus", steps=3, pipelines=["g"]))
    assert from_json(compare.Request, json.loads(json.dumps(dataclasses.asdict(request)))) == request


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
def test_seed_systems_run_end_to_end_and_report_each_metric(tmp_path: Path, pipelines: None) -> None:
    from run_seeds import main as seeds

    seeds(quick=True, workdir=tmp_path / "seeds")
    rows = [line for line in (tmp_path / "seeds" / "report.md").read_text().splitlines() if line.startswith("| ")]
    values = {row.split(" | ")[0].lstrip("| "): float(row.split(" | ")[2]) for row in rows[1:]}
    assert len(values) == 4 and all(math.isfinite(v) for v in values.values()), values
    assert values["next character (vanilla RNN, TBPTT 32)"] < 4.2  # below the text's unigram entropy (4.13)


@pytest.mark.slow
def test_vad_pipeline_reports_frames_plots_a_clip_and_streams_like_offline(tmp_path: Path, pipelines: None) -> None:
    from run_vad import main as vad

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
    streaming = vad(recipes=[str(config)], workdir=tmp_path / "work", chunk_frames=7)
    assert streaming["clips"] == 15 and streaming["same_decisions"] == 1.0
    assert streaming["max_abs_logit_difference"] < 1e-4
    assert (tmp_path / "work" / "vad_clip.png").read_bytes()[:4] == b"\x89PNG"
    rows = [line for line in (tmp_path / "work" / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| causal GRU (frames)",
        "| energy threshold (c0, tuned on train)",
    ]


@pytest.mark.slow
def test_fsdd_pipeline_adapts_each_held_out_speaker_and_reports_both(tmp_path: Path, pipelines: None) -> None:
    from recipes import command_line
    from run_fsdd import main as fsdd

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
    recipes = json.dumps([str(config)])
    args = ["--recipes", recipes, "--loso_recipes", recipes, "--workdir", str(work), "--official", "false"]
    report = command_line(fsdd, None, [*args, "--speakers+", "bob", "--", *CPU])
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
    assert command_line(fsdd, None, [*args, "--speakers+", "bob", "--", *CPU]).read_text() == report.read_text()
