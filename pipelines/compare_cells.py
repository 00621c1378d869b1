"""Compare recurrent cells and directions on one corpus: rnn vs gru vs lstm, uni- vs bidirectional.

    python pipelines/compare_cells.py [--config pipelines/configs/compare_cells_fsdd.yaml]

Ends in one table: test accuracy, parameter count and median seconds per training epoch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speechrnn.stages import Pipeline, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pipelines/configs/compare_cells_fsdd.yaml")
    parser.add_argument("--workdir", default=None, help="default: lightning_logs/pipelines/<config name>")
    parser.add_argument("--cells", nargs="+", default=["rnn", "gru", "lstm"])
    args = parser.parse_args()

    pipeline = Pipeline(args.workdir or f"lightning_logs/pipelines/{Path(args.config).stem}")
    pipeline.stage("prepare", lambda: prepare(args.config))
    rows = []
    for cell in args.cells:
        for bidirectional in (False, True):
            name = f"{'bi' if bidirectional else 'uni'}-{cell}"
            result = pipeline.fit(
                f"fit-{name}", args.config, ["--model.cell", cell, "--model.bidirectional", str(bidirectional).lower()]
            )
            rows.append([name, result["metrics"]["test/acc"], result["parameters"], result["epochs"],
                         round(result["median_epoch_seconds"] or float("nan"), 2)])  # fmt: skip
    header = ["model", "test accuracy", "parameters", "epochs", "seconds per epoch (median)"]
    pipeline.write_table("report", header, rows, f"compare cells: {Path(args.config).stem}")


if __name__ == "__main__":
    main()
