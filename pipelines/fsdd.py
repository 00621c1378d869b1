"""FSDD end to end: prepare -> fit (official split) -> leave-one-speaker-out fits, each adapted
to its held-out speaker's unlabelled recordings -> report.

    python pipelines/fsdd.py [--config CONFIG] [--loso-config CONFIG]
                             [--workdir lightning_logs/pipelines/fsdd] [--no-adapt] [-- --data.seed 1 ...]

Every fit uses the defaults unless a config is given: ``--data FSDDDataModule`` for the official
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

import argparse
import shutil
import statistics
from pathlib import Path

from speechrnn.adapt import main as adapt
from speechrnn.stages import Pipeline, datamodule_from_config, prepare

OFFICIAL = {"class_path": "speechrnn.data.FSDDDataModule", "init_args": {"split": "official"}}
"""The data of the default fits (the official split; folds add ``--data.split speaker``)."""


def main(argv: list[str] | None = None) -> Path:
    """Run the pipeline (``argv``: the command line's arguments); returns the report's path."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="recipe of the official-split fit (default: the defaults)")
    parser.add_argument(
        "--loso-config", default=None, help="recipe of the leave-one-speaker-out fits (default: the defaults)"
    )
    parser.add_argument("--workdir", default="lightning_logs/pipelines/fsdd")
    parser.add_argument("--skip-official", action="store_true", help="only the leave-one-speaker-out fits")
    parser.add_argument("--skip-loso", action="store_true", help="only the official split")
    parser.add_argument("--speakers", nargs="*", help="hold out only these speakers (default: every one)")
    parser.add_argument("--no-adapt", action="store_true", help="skip self-training on each held-out speaker")
    args, overrides = parser.parse_known_args(argv)
    overrides = [o for o in overrides if o != "--"]

    pipeline = Pipeline(args.workdir)
    official_data = args.config or OFFICIAL
    pipeline.stage("prepare", lambda: prepare(official_data))
    rows = []
    if not args.skip_official:
        data = [] if args.config else ["--data", OFFICIAL["class_path"]]
        official = pipeline.fit("fit-official", args.config, [*data, *overrides])
        rows.append(["official split (index 0-4)", "all", official["metrics"]["test/acc"], "-"])
    if not args.skip_loso:
        speakers = args.speakers or datamodule_from_config(args.loso_config or OFFICIAL).speakers
        data = [] if args.loso_config else ["--data", OFFICIAL["class_path"], "--data.split", "speaker"]
        accuracies: dict[str, float] = {}
        adapted: dict[str, float] = {}
        for speaker in speakers:
            result = pipeline.fit(
                f"fit-loso-{speaker}", args.loso_config, [*data, *overrides, "--data.test_speakers", f"[{speaker}]"]
            )
            accuracies[speaker] = result["metrics"]["test/acc"]
            copy_confusion(Path(result["run"]) / "report_test", pipeline.workdir / f"confusion-{speaker}.csv")
            if not args.no_adapt:
                out = pipeline.workdir / f"adapt-loso-{speaker}"
                summary = pipeline.stage(
                    f"adapt-loso-{speaker}",
                    lambda checkpoint=result["checkpoint"], out=out: adapt(["--ckpt", checkpoint, "--out", str(out)]),
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
    matrix = report / "confusion_matrix.csv"
    if matrix.is_file():
        shutil.copyfile(matrix, destination)


if __name__ == "__main__":
    main()
