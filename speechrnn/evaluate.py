"""``python -m speechrnn.evaluate --ckpt PATH``: the evaluation report of a checkpoint on a split.

The data comes from the run's saved ``config.yaml`` (beside ``checkpoints/``), so the split is the
one the model was trained with; any ``--data.*`` option overrides it, and ``--data CLASS`` points
the checkpoint at other data with the same labels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from speechrnn.data.base import SequenceDataModuleBase
from speechrnn.errors import checked_options, run_entry_point
from speechrnn.models.classifier import RNNClassifier
from speechrnn.reports import report_split


def run_config(checkpoint: Path) -> Path | None:
    """The ``config.yaml`` of the run a checkpoint belongs to (``version_N/checkpoints/x.ckpt``)."""
    candidate = checkpoint.resolve().parent.parent / "config.yaml"
    return candidate if candidate.is_file() else None


def build_parser(prog: str = "python -m speechrnn.evaluate", description: str | None = __doc__) -> ArgumentParser:
    """The options of a command that reads a checkpoint and a split of its run's data."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options.")
    parser.add_argument("--ckpt", type=Path, required=True, help="Checkpoint to evaluate.")
    parser.add_argument(
        "--split", type=str, default="test", choices=["train", "val", "test"], help="Split to evaluate."
    )
    parser.add_argument("--out", type=Path | None, default=None, help="Report folder (default: <run>/report_<split>).")
    parser.add_argument("--device", type=str, default="auto", help="Torch device (auto: cuda when available).")
    parser.add_subclass_arguments(SequenceDataModuleBase, "data", required=False, help="Data (default: the run's).")
    return parser


def parse_with_run_data(parser: ArgumentParser, args: list[str] | None = None) -> Any:
    """Parse ``args`` with the checkpoint's run ``config.yaml`` as the defaults of ``--data.*``
    (which the command line or a ``--config`` file then override)."""
    args = sys.argv[1:] if args is None else args
    # The checkpoint is read before the full parse (from the command line or a --config file).
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--ckpt", type=Path)
    pre.add_argument("--config", action="append", default=[])
    known = pre.parse_known_args(args)[0]
    checkpoint = known.ckpt
    for file in known.config:
        given = yaml.safe_load(Path(file).read_text()) if Path(file).is_file() else None
        if checkpoint is None and isinstance(given, dict) and given.get("ckpt"):
            checkpoint = Path(given["ckpt"])
    if checkpoint is not None and (config := run_config(checkpoint)) is not None:
        parser.set_defaults({"data": yaml.safe_load(config.read_text())["data"]})
    config = parser.parse_args(args)
    if config.data is None:
        parser.error("no run config.yaml beside the checkpoint; give the data with --data CLASS --data.*")
    return config


def resolve_device(device: str) -> str:
    """``auto``: cuda when available, else cpu; anything else as given."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def main(args: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    config = parse_with_run_data(parser, args)
    with checked_options():
        datamodule = parser.instantiate_classes(config).data
    model = RNNClassifier.from_checkpoint(config.ckpt, map_location="cpu")
    out = config.out or config.ckpt.resolve().parent.parent / f"report_{config.split}"
    device = resolve_device(config.device)
    metrics = report_split(model, datamodule, config.split, out, device, extra={"checkpoint": str(config.ckpt)})
    print(f"{config.split}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}; report in {out}")
    return metrics


if __name__ == "__main__":
    run_entry_point(main)
