"""synthetic-commands end to end: prepare -> fit -> report, beside the bag-of-frames baseline.

    python pipelines/run_synthetic_commands.py [--recipes '[RECIPE, ...]'] [-- FIT OPTIONS]

The recipe is ``pipelines/configs/synthetic_commands.yaml`` unless ``--recipes`` names others.
Finished stages are skipped on a rerun (``speechrnn.stages.Pipeline``).
"""

from __future__ import annotations

from pathlib import Path

from recipes import command_line

from speechrnn.baselines import bag_of_frames_accuracy
from speechrnn.stages import Pipeline, data_section, datamodule_from_config, prepare

RECIPES = ["pipelines/configs/synthetic_commands.yaml"]


def main(
    recipes: list[str] = RECIPES,
    workdir: Path = Path("lightning_logs/pipelines/synthetic_commands"),
    fit_args: list[str] | None = None,
) -> Path:
    """Fit the recurrent model and the bag-of-frames baseline on the same split; returns the report.

    Args:
        recipes: Fit configs applied in order, as ``python -m speechrnn.fit --config A --config B``.
        workdir: Where the stages' results, the runs and the report go.
        fit_args: Options for every fit (on the command line: the options after ``--``).
    """
    pipeline = Pipeline(workdir)
    data = data_section(recipes)
    pipeline.stage("prepare", lambda: prepare(data))
    recurrent = pipeline.fit("fit", recipes, fit_args or [])
    raw = {"features": {"normalize": "none"}}
    baseline = pipeline.stage("baseline", lambda: bag_of_frames_accuracy(datamodule_from_config(data, **raw)))
    rows = [
        ["recurrent model", recurrent["metrics"]["test/acc"]],
        ["bag of frames (mean+std, logreg)", baseline["test"]],
    ]
    return pipeline.write_table("report", ["model", "test accuracy"], rows, "synthetic-commands: test accuracy")


if __name__ == "__main__":
    command_line(main, __doc__)
