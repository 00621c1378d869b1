"""FSDD end to end: prepare -> fit (official split) -> leave-one-speaker-out fits -> report.

    python pipelines/fsdd.py [--config pipelines/configs/fsdd.yaml] [--loso-config pipelines/configs/fsdd_loso.yaml]
                             [--workdir lightning_logs/pipelines/fsdd] [-- --data.augment.vtln_warp 0.1 ...]

Every speaker present in the data folder is held out once (train on the others, same recipe for
every fold, settings chosen without looking at the held-out speaker); the report is one table of
per-speaker test accuracy, their mean and the worst speaker, beside the official split's accuracy,
and each held-out speaker's confusion matrix is copied into the work folder. Options after ``--``
go to every fit. Finished stages are skipped when the command is run again.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

from speechrnn.pipelines import Pipeline, datamodule_from_config, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pipelines/configs/fsdd.yaml", help="recipe of the official-split fit")
    parser.add_argument(
        "--loso-config", default="pipelines/configs/fsdd_loso.yaml", help="recipe of the leave-one-speaker-out fits"
    )
    parser.add_argument("--workdir", default="lightning_logs/pipelines/fsdd")
    parser.add_argument("--skip-official", action="store_true", help="only the leave-one-speaker-out fits")
    parser.add_argument("--skip-loso", action="store_true", help="only the official split")
    parser.add_argument("--speakers", nargs="*", help="hold out only these speakers (default: every one)")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]

    pipeline = Pipeline(args.workdir)
    pipeline.stage("prepare", lambda: prepare(args.config))
    rows = []
    if not args.skip_official:
        official = pipeline.fit("fit-official", args.config, overrides)
        rows.append(["official split (index 0-4)", "all", official["metrics"]["test/acc"]])
    if not args.skip_loso:
        speakers = args.speakers or datamodule_from_config(args.loso_config).speakers
        accuracies: dict[str, float] = {}
        for speaker in speakers:
            result = pipeline.fit(
                f"fit-loso-{speaker}", args.loso_config, [*overrides, "--data.test_speakers", f"[{speaker}]"]
            )
            accuracies[speaker] = result["metrics"]["test/acc"]
            rows.append([f"leave {speaker} out", speaker, accuracies[speaker]])
            matrix = Path(result["run"]) / "report_test" / "confusion_matrix.csv"
            if matrix.is_file():
                shutil.copyfile(matrix, pipeline.workdir / f"confusion-{speaker}.csv")
        worst = min(accuracies, key=accuracies.get)
        rows.append(["leave-one-speaker-out mean", "-", statistics.mean(accuracies.values())])
        rows.append(["leave-one-speaker-out worst", worst, accuracies[worst]])
    pipeline.write_table("report", ["run", "held-out speaker", "test accuracy"], rows, "FSDD: test accuracy")


if __name__ == "__main__":
    main()
