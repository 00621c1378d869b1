"""``python -m speechrnn.evaluate --ckpt PATH``: the evaluation report of a checkpoint on a split.

The data comes from the run's saved ``config.yaml`` (beside ``checkpoints/``), so the split is the
one the model was trained with; any ``--data.*`` option overrides it, and ``--data CLASS`` points
the checkpoint at other data with the same labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from speechrnn.cli import command_parser, option_errors, parse_with_run_data, resolve_device
from speechrnn.data.base import SequenceDataModuleBase
from speechrnn.errors import run_entry_point
from speechrnn.models.classifier import RNNClassifier
from speechrnn.reports import report_split


def build_parser(command: str = "evaluate", description: str | None = __doc__) -> ArgumentParser:
    """The options of a command that reads a checkpoint and a split of its run's data."""
    parser = command_parser(command, description)
    parser.add_argument("--ckpt", type=Path, required=True, help="Checkpoint to evaluate.")
    parser.add_argument(
        "--split", type=str, default="test", choices=["train", "val", "test"], help="Split to evaluate."
    )
    parser.add_argument("--out", type=Path | None, default=None, help="Report folder (default: <run>/report_<split>).")
    parser.add_argument("--device", type=str, default="auto", help="Torch device (auto: cuda when available).")
    parser.add_subclass_arguments(SequenceDataModuleBase, "data", required=False, help="Data (default: the run's).")
    return parser


def main(args: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    config = parse_with_run_data(parser, args)
    with option_errors():
        datamodule = parser.instantiate_classes(config).data
    model = RNNClassifier.from_checkpoint(config.ckpt, map_location="cpu")
    out = config.out or config.ckpt.resolve().parent.parent / f"report_{config.split}"
    device = resolve_device(config.device)
    metrics = report_split(model, datamodule, config.split, out, device, extra={"checkpoint": str(config.ckpt)})
    print(f"{config.split}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}; report in {out}")
    return metrics


if __name__ == "__main__":
    run_entry_point(main)
