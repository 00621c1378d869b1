"""FSDD end to end: prepare -> fit (official split) -> leave-one-speaker-out fits, each adapted
to its held-out speaker's unlabelled recordings -> report.

    python pipelines/run_fsdd.py [--recipes '[CONFIG, ...]'] [--loso_recipes '[CONFIG, ...]']
                                 [--workdir lightning_logs/pipelines/fsdd] [--adapt false] [-- --data.seed 1 ...]

Every fit uses the defaults unless recipes are given: ``--data FSDDDataModule`` for the official
split, ``--data.split speaker --data.test_speakers [SPEAKER]`` for each fold. Every speaker present
in the data folder is held out once (train on the others, same recipe for every fold, settings
chosen without looking at the held-out speaker), then the fold's model is
adapted to that speaker by self-training on its recordings without their labels
(``python -m speechrnn.adapt``). The report is one table of per-speaker test accuracy before and
after adaptation, their means and the worst speaker, beside the official split's accuracy; each
held-out speaker's confusion matrices are copied into the work folder. Options after ``--`` go to
every fit. Finished stages are skipped when the command is run again.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

from recipes import command_line

from speechrnn.adapt import main as self_train
from speechrnn.stages import Pipeline, datamodule_from_config, prepare

OFFICIAL = {"class_path": "speechrnn.data.FSDDDataModule", "init_args": {"split": "official"}}
"""The data of the default fits (the official split; folds add ``--data.split speaker``)."""


def main(
    recipes: list[str] | None = None,
    loso_recipes: list[str] | None = None,
    workdir: Path = Path("lightning_logs/pipelines/fsdd"),
    official: bool = True,
    loso: bool = True,
    speakers: list[str] | None = None,
    adapt: bool = True,
    fit_args: list[str] | None = None,
) -> Path:
    """Run the pipeline; returns the report's path.

    Args:
        recipes: Fit configs of the official-split fit, applied in order (default: the defaults).
        loso_recipes: Fit configs of the leave-one-speaker-out fits, applied in order (default: the
            defaults, split by speaker).
        workdir: Where the stages' results, the runs, the confusion matrices and the report go.
        official: Fit the official split (false: only the leave-one-speaker-out fits).
        loso: Fit the leave-one-speaker-out folds (false: only the official split).
        speakers: Hold out only these speakers (default: every one).
        adapt: Self-train each fold's model on its held-out speaker's recordings.
        fit_args: Options for every fit (on the command line: the options after ``--``).
    """
    fit_args = list(fit_args or [])
    pipeline = Pipeline(workdir)
    pipeline.stage("prepare", lambda: prepare(recipes or OFFICIAL))
    rows = []
    if official:
        data = [] if recipes else ["--data", OFFICIAL["class_path"]]
        result = pipeline.fit("fit-official", recipes, [*data, *fit_args])
        rows.append(["official split (index 0-4)", "all", result["metrics"]["test/acc"], "-"])
    if loso:
        folds = loso_recipes or OFFICIAL
        speakers = speakers or datamodule_from_config(folds).speakers
        by_speaker = ["--data", OFFICIAL["class_path"], "--data.split", "speaker"]
        data = [] if loso_recipes else by_speaker
        accuracies: dict[str, float] = {}
        adapted: dict[str, float] = {}
        for speaker in speakers:
            result = pipeline.fit(
                f"fit-loso-{speaker}", loso_recipes, [*data, *fit_args, "--data.test_speakers", f"[{speaker}]"]
            )
            accuracies[speaker] = result["metrics"]["test/acc"]
            copy_confusion(Path(result["run"]) / "report_test", pipeline.workdir / f"confusion-{speaker}.csv")
            if adapt:
                out = pipeline.workdir / f"adapt-loso-{speaker}"
                summary = pipeline.stage(
                    f"adapt-loso-{speaker}",
                    lambda checkpoint=result["checkpoint"], out=out: self_train(
                        ["--ckpt", checkpoint, "--out", str(out)]
                    ),
                )
                adapted[speaker] = summary["accuracy_after"]
                copy_confusion(out / "report_test", pipeline.workdir / f"confusion-{speaker}-adapted.csv")
            rows.append([f"leave {speaker} out", speaker, accuracies[speaker], adapted.get(speaker, "-")])
        mean_adapted = statistics.mean(adapted.values()) if adapted else "-"
        rows.append(["leave-one-speaker-out mean", "-", statistics.mean(accuracies.values()), mean_adapted])
        worst = min(accuracies, key=accuracies.get)
        rows.append(["leave-one-speaker-out worst", worst, accuracies[worst], "-"])
        if adapted:
            worst = min(adapted, key=adapted.get)
            rows.append(["leave-one-speaker-out worst after adaptation", worst, "-", adapted[worst]])
    header = ["run", "held-out speaker", "test accuracy", "after self-training on the speaker"]
    return pipeline.write_table("report", header, rows, "FSDD: test accuracy")


def copy_confusion(report: Path, destination: Path) -> None:
    """The report's confusion matrix under another name, when the report has one."""
    matrix = report / "confusion_matrix.csv"
    if matrix.is_file():
        shutil.copyfile(matrix, destination)


if __name__ == "__main__":
    command_line(main, __doc__)
