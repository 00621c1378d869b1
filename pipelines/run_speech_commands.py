"""Google Speech Commands v2 on a GPU box: prepare (download, cache) -> fit -> report.

    python pipelines/run_speech_commands.py                       # all 35 words
    python pipelines/run_speech_commands.py --recipes+ pipelines/configs/speech_commands_v2_12.yaml

The recipes hold the hyperparameters meant for one modern GPU (bf16, on-GPU MFCC and SpecAugment);
the 12-class task is a recipe on top of the 35-word one. Finished stages are skipped on a rerun.
"""

from __future__ import annotations

from pathlib import Path

from recipes import command_line

from speechrnn.stages import Pipeline, data_section, prepare

RECIPES = ["pipelines/configs/speech_commands_v2_35.yaml"]


def main(recipes: list[str] = RECIPES, workdir: Path | None = None, fit_args: list[str] | None = None) -> Path:
    """Prepare the corpus, fit, and report the test split's metrics; returns the report.

    Args:
        recipes: Fit configs applied in order, as ``python -m speechrnn.fit --config A --config B``.
        workdir: Where the stages' results, the run and the report go (default:
            ``lightning_logs/pipelines/<the last recipe's name>``).
        fit_args: Options for every fit (on the command line: the options after ``--``).
    """
    name = Path(recipes[-1]).stem
    pipeline = Pipeline(workdir or Path("lightning_logs/pipelines") / name)
    data = data_section(recipes)
    pipeline.stage("prepare", lambda: prepare(data))
    result = pipeline.fit("fit", recipes, fit_args or [])
    report = result["report"] or {}
    rows = [[key, report[key]] for key in ("accuracy", "balanced_accuracy", "macro_f1", "expected_calibration_error")]
    return pipeline.write_table("report", ["metric", "value"], rows, f"{name}: test split")


if __name__ == "__main__":
    command_line(main, __doc__)
