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

import numpy as np
import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from speechrnn.data.base import SequenceDataModuleBase, Split
from speechrnn.errors import checked_options, run_entry_point
from speechrnn.models.classifier import RNNClassifier, output_activation
from speechrnn.reports import write_report


@torch.inference_mode()
def predict_split(
    model: RNNClassifier, datamodule: SequenceDataModuleBase, split: Split, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray, list[str], list[str | None]]:
    """Targets ``(N,)``, probabilities ``(N, C)``, sources and speakers of every example in ``split``."""
    datamodule.setup("test")
    model = model.to(device).eval()
    outputs, indices = [], []
    for batch in datamodule.dataloader(split, shuffle=False, shard=False):
        features, lengths, *_ = datamodule.featurize((batch[0].to(device, non_blocking=True), *batch[1:]))
        outputs.append(output_activation(model(features, lengths), model.hparams.task).cpu())
        indices.append(batch[3])
    probabilities = torch.cat(outputs).numpy()
    indices = torch.cat(indices).numpy()
    targets = datamodule.targets()[indices]
    records = [datamodule.record_of(int(i)) for i in indices]
    return targets, probabilities, [r.source for r in records], [r.speaker for r in records]


def report_split(
    model: RNNClassifier,
    datamodule: SequenceDataModuleBase,
    split: Split,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the evaluation report of ``model`` on ``split`` into ``out_dir``."""
    if model.class_names != datamodule.class_names:
        raise ValueError(
            f"the checkpoint's classes {model.class_names} differ from the data's {datamodule.class_names}"
        )
    targets, probabilities, sources, speakers = predict_split(model, datamodule, split, device)
    return write_report(
        out_dir, targets, probabilities, model.class_names, sources, speakers,
        title=f"{type(datamodule).__name__}: {split} split", extra=extra,
    )  # fmt: skip


def run_config(checkpoint: Path) -> Path | None:
    """The ``config.yaml`` of the run a checkpoint belongs to (``version_N/checkpoints/x.ckpt``)."""
    candidate = checkpoint.resolve().parent.parent / "config.yaml"
    return candidate if candidate.is_file() else None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m speechrnn.evaluate", description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options.")
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
    args = sys.argv[1:] if args is None else args
    # The run's data config becomes the defaults that --data.* options then override, so the
    # checkpoint is read before the full parse (from the command line or a --config file).
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
    with checked_options():
        datamodule = parser.instantiate_classes(config).data
    model = RNNClassifier.from_checkpoint(config.ckpt, map_location="cpu")
    out = config.out or config.ckpt.resolve().parent.parent / f"report_{config.split}"
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    metrics = report_split(model, datamodule, config.split, out, device, extra={"checkpoint": str(config.ckpt)})
    print(f"{config.split}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}; report in {out}")
    return metrics


if __name__ == "__main__":
    run_entry_point(main)
