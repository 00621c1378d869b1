"""synthetic-commands end to end: prepare -> fit -> report, beside the bag-of-frames baseline.

python pipelines/synthetic_commands.py [--config pipelines/configs/synthetic_commands.yaml]
"""

from __future__ import annotations

import argparse

from speechrnn.baselines import bag_of_frames_accuracy
from speechrnn.stages import Pipeline, datamodule_from_config, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pipelines/configs/synthetic_commands.yaml")
    parser.add_argument("--workdir", default="lightning_logs/pipelines/synthetic_commands")
    args = parser.parse_args()

    pipeline = Pipeline(args.workdir)
    pipeline.stage("prepare", lambda: prepare(args.config))
    recurrent = pipeline.fit("fit", args.config)
    raw = {"features": {"normalize": "none"}}
    baseline = pipeline.stage("baseline", lambda: bag_of_frames_accuracy(datamodule_from_config(args.config, **raw)))
    rows = [
        ["recurrent model", recurrent["metrics"]["test/acc"]],
        ["bag of frames (mean+std, logreg)", baseline["test"]],
    ]
    pipeline.write_table("report", ["model", "test accuracy"], rows, "synthetic-commands: test accuracy")


if __name__ == "__main__":
    main()
