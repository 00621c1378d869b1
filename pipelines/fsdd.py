"""FSDD end to end: prepare -> fit (official split) -> leave-one-speaker-out fits -> report.

    python pipelines/fsdd.py [--config pipelines/configs/fsdd.yaml] [--workdir lightning_logs/pipelines/fsdd]

Every speaker present in the data folder is held out once (train on the others); the report is
one table of per-speaker test accuracy and their mean, beside the official split's accuracy.
Finished stages are skipped when the command is run again.
"""

from __future__ import annotations

import argparse
import statistics

from speechrnn.pipelines import Pipeline, datamodule_from_config, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pipelines/configs/fsdd.yaml")
    parser.add_argument("--workdir", default="lightning_logs/pipelines/fsdd")
    parser.add_argument("--skip-loso", action="store_true", help="only the official split")
    args = parser.parse_args()

    pipeline = Pipeline(args.workdir)
    pipeline.stage("prepare", lambda: prepare(args.config))
    official = pipeline.fit("fit-official", args.config)
    rows = [["official split (index 0-4)", "all", official["metrics"]["test/acc"]]]
    if not args.skip_loso:
        speakers = datamodule_from_config(args.config).speakers
        accuracies = []
        for speaker in speakers:
            result = pipeline.fit(
                f"fit-loso-{speaker}", args.config, ["--data.split", "speaker", "--data.test_speakers", f"[{speaker}]"]
            )
            accuracies.append(result["metrics"]["test/acc"])
            rows.append([f"leave {speaker} out", speaker, accuracies[-1]])
        rows.append(["leave-one-speaker-out mean", "-", statistics.mean(accuracies)])
    pipeline.write_table("report", ["run", "held-out speaker", "test accuracy"], rows, "FSDD: test accuracy")


if __name__ == "__main__":
    main()
