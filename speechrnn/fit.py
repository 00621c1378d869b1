"""``python -m speechrnn.fit``: train, test the kept checkpoint, write ``test_metrics.json`` and the
test split's evaluation report (``report_test/``) into the run folder.

With no arguments it trains a bidirectional GRU on the embedded synthetic-commands corpus.
Every LightningCLI option works (``--help``); ``--config lightning_logs/version_N/config.yaml``
replays a run and ``--ckpt_path last`` resumes one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speechrnn.callbacks import EpochTimer
from speechrnn.cli import SpeechRNNCLI, check_trainer_plan, option_errors
from speechrnn.data.splits import SPLITS
from speechrnn.errors import run_entry_point
from speechrnn.io import atomic_write_json
from speechrnn.models.classifier import is_classification, is_per_step
from speechrnn.reports import report_split


def run_folder(trainer: Any) -> Path:
    """The run's folder (``lightning_logs/version_N``), where config, checkpoints and reports go."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def resolve_checkpoint(ckpt_path: str | None, trainer: Any) -> str | None:
    """``last`` means the newest ``last.ckpt`` among earlier runs under the same root (a resumed run
    gets a new run folder of its own); any other value is passed to Lightning as is."""
    if ckpt_path != "last":
        return ckpt_path
    current = run_folder(trainer).resolve()
    candidates = [
        path
        for path in Path(trainer.default_root_dir).glob("lightning_logs/version_*/checkpoints/last.ckpt")
        if path.parents[1].resolve() != current
    ]
    if not candidates:
        raise FileNotFoundError(f"--ckpt_path last: no last.ckpt under {trainer.default_root_dir}/lightning_logs/")
    return str(max(candidates, key=lambda path: path.stat().st_mtime_ns))


def main(args: list[str] | None = None) -> dict[str, float]:
    """Train, test the kept checkpoint (the last epoch's unless ``--checkpoint.monitor`` names a
    metric) and write the run's metrics and report; returns the test metrics.

    Options are checked before any data is prepared: an impossible one raises
    :class:`~speechrnn.errors.ConfigError` naming it.
    """
    with option_errors(args):
        cli = SpeechRNNCLI(args=args)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    check_trainer_plan(trainer)
    datamodule.required_splits = SPLITS  # fit validates every epoch and tests the kept checkpoint
    trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_checkpoint(cli.config.get("ckpt_path"), trainer))
    best = cli.best_checkpoint.best_model_path if trainer.checkpoint_callback else ""
    results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
    metrics = {key: float(value) for key, value in (results[0] if results else {}).items()}
    folder = run_folder(trainer)  # a collective call under DDP: every rank asks
    if trainer.is_global_zero:
        timer = next((c for c in trainer.callbacks if isinstance(c, EpochTimer)), None)
        timing = {"epochs": len(timer.durations), "epoch_seconds": timer.durations} if timer else {}
        atomic_write_json(
            folder / "test_metrics.json", {"checkpoint": best or None, "metrics": metrics, "timing": timing}
        )
        if is_classification(model.hparams.task):
            device = trainer.strategy.root_device
            extra = {"checkpoint": best, "validation": datamodule.validation}
            report = report_split(model, datamodule, "test", folder / "report_test", device, extra)
            if is_per_step(model.hparams.task):
                summary = f"frame accuracy {report['accuracy']:.4f}, {report['bits_per_step']:.3f} bits per step"
            else:
                summary = f"accuracy {report['accuracy']:.4f}"
            print(f"test {summary}; report in {folder / 'report_test'}")
        print(f"run folder: {folder}")
    end_distributed(trainer)
    return metrics


def end_distributed(trainer: Any) -> None:
    """Under DDP, let every rank leave together and close the process group: a rank that exits
    while rank 0 still writes the report, with gloo's threads running, can abort the whole run."""
    import torch.distributed as dist

    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        trainer.strategy.barrier("speechrnn.fit end")
        dist.destroy_process_group()


if __name__ == "__main__":
    run_entry_point(main)
