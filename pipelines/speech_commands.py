"""Google Speech Commands v2 on a GPU box: prepare (download, cache) -> fit -> report.

    python pipelines/speech_commands.py --config pipelines/configs/speech_commands_v2_35.yaml
    python pipelines/speech_commands.py --config pipelines/configs/speech_commands_v2_12.yaml

The configs hold the hyperparameters meant for one modern GPU (bf16, on-GPU MFCC and SpecAugment).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speechrnn.stages import Pipeline, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pipelines/configs/speech_commands_v2_35.yaml")
    parser.add_argument("--workdir", default=None, help="default: lightning_logs/pipelines/<config name>")
    args = parser.parse_args()

    pipeline = Pipeline(args.workdir or f"lightning_logs/pipelines/{Path(args.config).stem}")
    pipeline.stage("prepare", lambda: prepare(args.config))
    result = pipeline.fit("fit", args.config)
    report = result["report"] or {}
    rows = [[key, report[key]] for key in ("accuracy", "balanced_accuracy", "macro_f1", "expected_calibration_error")]
    pipeline.write_table("report", ["metric", "value"], rows, f"{Path(args.config).stem}: test split")


if __name__ == "__main__":
    main()
