"""Evaluation reports, ``speechrnn.evaluate`` and ``speechrnn.predict`` from a real (tiny) run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import accuracy_score, f1_score

from speechrnn import evaluate, predict
from speechrnn.fit import main
from speechrnn.reports import compute_metrics, write_report
from tests.conftest import chirp, write_corpus
from tests.test_cli import fit_args

REPORT_FILES = ("report.md", "report.json", "classification_report.txt", "confusion_matrix.csv",
                "confusion_matrix.png", "predictions.csv")  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    manifest = write_corpus(tmp / "corpus", speakers=6, per_class=2)
    main(fit_args(manifest, tmp, "--trainer.max_epochs", "2", "--data.features.normalize", "utterance"))
    return tmp / "runs" / "lightning_logs" / "version_0"


def test_metrics_match_scikit_learn_and_known_values() -> None:
    targets = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.7 + 0.1
    metrics = compute_metrics(targets, probabilities, ["a", "b", "c"], speakers=["x", "x", "x", "y", "y", "y"])
    predictions = probabilities.argmax(1)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(targets, predictions)) == pytest.approx(4 / 6)
    assert metrics["macro_f1"] == pytest.approx(f1_score(targets, predictions, average="macro"))
    assert metrics["per_speaker_accuracy"] == {"x": pytest.approx(2 / 3), "y": pytest.approx(2 / 3)}
    assert metrics["log_loss"] == pytest.approx(-np.log(0.8) * 4 / 6 - np.log(0.1) * 2 / 6)
    # every prediction has confidence 0.8: ECE = |0.8 - 4/6|
    assert metrics["expected_calibration_error"] == pytest.approx(abs(0.8 - 4 / 6), abs=1e-6)
    assert metrics["top_confusions"][0]["count"] == 1 and len(metrics["top_confusions"]) == 2


def test_report_files_are_written_and_readable_with_many_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = [f"word{i:02d}" for i in range(36)]
    targets = rng.integers(0, 36, 300)
    probabilities = rng.dirichlet(np.ones(36), 300)
    write_report(tmp_path, targets, probabilities, names)
    for name in REPORT_FILES:
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "confusion_matrix.csv") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 37 and rows[0][1:] == names
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == 300


def test_fit_writes_the_test_report(trained_run: Path) -> None:
    report = trained_run / "report_test"
    for name in REPORT_FILES:
        assert (report / name).is_file(), name
    data = json.loads((report / "report.json").read_text())
    saved = json.loads((trained_run / "test_metrics.json").read_text())["metrics"]
    assert data["accuracy"] == pytest.approx(saved["test/acc"], abs=1e-6)
    with open(report / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == data["examples"] and all(Path(r["path"]).is_file() and r["speaker"] for r in rows)


def test_evaluate_cli_uses_the_runs_data(trained_run: Path, tmp_path: Path) -> None:
    metrics = evaluate.main(["--ckpt", str(trained_run / "checkpoints" / "last.ckpt"), "--split", "val",
                             "--out", str(tmp_path / "val")])  # fmt: skip
    assert (tmp_path / "val" / "report.md").read_text().startswith("# AudioFolderDataModule: val split")
    assert metrics["examples"] == 6


def test_predict_cli_reports_bad_files_and_continues(trained_run: Path, tmp_path: Path, capsys) -> None:
    good = tmp_path / "clips" / "good.wav"
    good.parent.mkdir()
    sf.write(good, chirp("down", 0.3, 22050, np.random.default_rng(0)), 22050)
    (tmp_path / "clips" / "broken.wav").write_bytes(b"RIFF nonsense")
    status = predict.main(["--ckpt", str(trained_run / "checkpoints" / "last.ckpt"), str(tmp_path / "clips"),
                           "--top-k", "2", "--format", "jsonl"])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 1
    assert "broken.wav" in err and err.count("\n") == 1
    [line] = out.strip().splitlines()
    result = json.loads(line)
    assert result["path"].endswith("good.wav") and len(result["top"]) == 2
    assert result["top"][0]["probability"] >= result["top"][1]["probability"]
    assert predict.main(["--ckpt", str(trained_run / "checkpoints" / "last.ckpt"), str(good)]) == 0


def test_every_entry_point_takes_a_config_file_and_prints_its_config(trained_run: Path, tmp_path: Path, capsys) -> None:
    from speechrnn import export

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    clip = tmp_path / "clip.wav"
    sf.write(clip, chirp("up", 0.3, 16000, np.random.default_rng(3)), 16000)
    (tmp_path / "predict.yaml").write_text(f"ckpt: {ckpt}\ntop_k: 1\nformat: jsonl\n")
    assert predict.main(["--config", str(tmp_path / "predict.yaml"), str(clip)]) == 0
    assert len(json.loads(capsys.readouterr().out)["top"]) == 1
    (tmp_path / "evaluate.yaml").write_text(f"ckpt: {ckpt}\nsplit: val\nout: {tmp_path / 'report'}\n")
    evaluate.main(["--config", str(tmp_path / "evaluate.yaml")])
    assert (tmp_path / "report" / "report.json").is_file()
    capsys.readouterr()
    for entry, args, key in [
        (predict.main, ["--ckpt", str(ckpt), str(clip)], "top_k: 3"),
        (evaluate.main, ["--ckpt", str(ckpt)], "split: test"),
        (export.main, ["--ckpt", str(ckpt), "--out", str(tmp_path / "m.onnx")], "format: onnx"),
        (main, [], "class_path: speechrnn.data.SyntheticCommandsDataModule"),
    ]:
        with pytest.raises(SystemExit) as stop:
            entry([*args, "--print_config"])
        assert stop.value.code in (0, None) and key in capsys.readouterr().out
