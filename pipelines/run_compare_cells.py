"""Compare recurrent cells and directions on one corpus: rnn vs gru vs lstm, uni- vs bidirectional.

    python pipelines/run_compare_cells.py                                    # 20 epochs per model
    python pipelines/run_compare_cells.py --recipes+ pipelines/configs/compare_cells_fsdd_quick.yaml

Ends in one table: test accuracy, parameter count and median seconds per training epoch.
Finished fits are skipped on a rerun.
"""

from __future__ import annotations

from pathlib import Path

from recipes import command_line

from speechrnn.stages import Pipeline, data_section, prepare

RECIPES = ["pipelines/configs/compare_cells_fsdd.yaml"]


def main(
    recipes: list[str] = RECIPES,
    workdir: Path | None = None,
    cells: tuple[str, ...] = ("rnn", "gru", "lstm"),
    fit_args: list[str] | None = None,
) -> Path:
    """Fit every cell one- and bidirectionally with the same recipe; returns the report.

    Args:
        recipes: Fit configs applied in order, as ``python -m speechrnn.fit --config A --config B``.
        workdir: Where the stages' results, the runs and the report go (default:
            ``lightning_logs/pipelines/<the last recipe's name>``).
        cells: Recurrent cells to compare (``--model.cell`` values).
        fit_args: Options for every fit (on the command line: the options after ``--``).
    """
    name = Path(recipes[-1]).stem
    pipeline = Pipeline(workdir or Path("lightning_logs/pipelines") / name)
    data = data_section(recipes)
    pipeline.stage("prepare", lambda: prepare(data))
    rows = []
    for cell in cells:
        for bidirectional in (False, True):
            model = f"{'bi' if bidirectional else 'uni'}-{cell}"
            options = ["--model.cell", cell, "--model.bidirectional", str(bidirectional).lower()]
            result = pipeline.fit(f"fit-{model}", recipes, [*(fit_args or []), *options])
            rows.append([model, result["metrics"]["test/acc"], result["parameters"], result["epochs"],
                         round(result["median_epoch_seconds"] or float("nan"), 2)])  # fmt: skip
    header = ["model", "test accuracy", "parameters", "epochs", "seconds per epoch (median)"]
    return pipeline.write_table("report", header, rows, f"compare cells: {name}")


if __name__ == "__main__":
    command_line(main, __doc__)
