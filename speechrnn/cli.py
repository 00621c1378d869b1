"""How every speechrnn command reads its options: the LightningCLI of ``fit`` (defaults and argument
links), the jsonargparse parsers of the other commands, the run-config reuse of ``evaluate`` and
``adapt``, the Trainer settings training commands share, and one-line errors for bad options or
config files (exit status 2)."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonargparse
import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, DefaultHelpFormatter, auto_cli
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from speechrnn.callbacks import (
    AnnealedEarlyStopping,
    EpochTimer,
    LastCheckpoint,
    QuietProfiler,
    ThrottledProgressBar,
    TrainingBudget,
)
from speechrnn.data.base import SequenceDataModuleBase
from speechrnn.errors import ConfigError, checked_options, reported_errors
from speechrnn.models.classifier import RNNClassifier

DEFAULT_DATA = "speechrnn.data.SyntheticCommandsDataModule"

# RNNClassifier keeps lengths on the CPU in its own transfer_batch_to_device, on purpose.
warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device` in `LightningModule`.*")
# The settings dataclasses (features, augment) document each field in a docstring below it: --help shows them.
jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)


def shows_help(args: Any = None) -> bool:
    """Whether a command line asks for help or a commented config, the only outputs that show the
    settings' field docstrings: reading those takes about 0.8 s of every start, so other runs skip it."""
    words = sys.argv[1:] if args is None else args if isinstance(args, list | tuple) else []
    return any(
        word in ("-h", "--help") or word.endswith(".help") or word.startswith("--print_config")
        for word in map(str, words)
    )


def default_precision() -> str:
    """bf16-mixed on GPUs that support it, 16-mixed on older GPUs, 32-bit on CPU.

    Mixed precision stays off on the CPU: there bf16 autocast slows GRUs about tenfold and can
    make oneDNN's LSTM fail.
    """
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


GRADIENT_CLIP_VAL = 5.0
"""Default gradient-norm clipping of every training run (exploding gradients through time)."""


def trainer_defaults(device: str | None = None) -> dict[str, Any]:
    """The Trainer settings every command that trains shares (``fit``, ``adapt``): the precision of
    the device (``device``, or the best one available), gradient clipping, the logging interval, and
    the bucketing sampler sharding itself under DDP."""
    on_gpu = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    return {
        "precision": default_precision() if on_gpu else "32-true",
        "gradient_clip_val": GRADIENT_CLIP_VAL,
        "log_every_n_steps": 10,
        "use_distributed_sampler": False,
    }


INVOKED_AS = {"prefix": "python -m speechrnn."}
"""How the running command was started: ``speechrnn`` (the dispatcher sets ``speechrnn ``) or
``python -m speechrnn.X``; it names the command in usage lines and errors."""


def prog(command: str) -> str:
    """The program name a command shows in ``--help``: ``speechrnn build-cache`` when started by the
    ``speechrnn`` dispatcher, ``python -m speechrnn.build_cache`` otherwise."""
    prefix = INVOKED_AS["prefix"]
    return prefix + (command if prefix.endswith(" ") else command.replace("-", "_"))


def one_line(error: BaseException) -> str:
    """A jsonargparse or YAML error as one line: the first line of the message, and the value that
    was given when the message says it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    given = next((line for line in lines[1:] if line.startswith(("Given value:", "Got value"))), None)
    head = lines[0]
    if head.endswith(":") and len(lines) > 1 and lines[1] != given:
        head = f"{head} {lines[1]}"
    return f"{head.rstrip(':')} ({given})" if given else head.rstrip(":")


@contextmanager
def option_errors(args: list[str] | None = None) -> Iterator[None]:
    """Around parsing and instantiating a command's options (``args``, by default the command
    line's): a parse error (an unknown option, a bad value, a config file that is not valid YAML or
    does not fit) or a constructor's ``ValueError`` becomes one :class:`ConfigError` line, exit
    status 2, instead of a usage dump or a traceback; it names the ``--config`` files when the
    problem is in one of them."""
    try:
        with checked_options():
            yield
    except ArgumentError as error:
        message = one_line(error)
        files = option_values(sys.argv[1:] if args is None else [str(a) for a in args], "--config")
        if files and message.startswith(("Problems parsing config", "Parser key")):
            message = f"--config {' '.join(files)}: {message}"
        raise ConfigError(message) from error


class RawDescription(DefaultHelpFormatter):
    """``--help`` with the command's docstring as written, so its example commands keep their lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


SCRIPT_PARSING: dict[str, Any] = {
    "as_positional": False,
    "return_instance": True,
    "formatter_class": RawDescription,
    "exit_on_error": False,
}
"""How :func:`run_script` reads a script's options: all named, dataclasses built, errors raised."""


def run_script(component: Callable[..., Any] | type, doc: str | None, args: list[str] | None = None) -> Any:
    """The scripts' command line (``pipelines/``, ``benchmarks/``): ``component`` called with (a
    function) or built from (a dataclass) the options of ``args`` (by default ``sys.argv``), which
    jsonargparse reads into its typed parameters or fields, whose docstrings give each option's help,
    with ``--help``, ``--config`` (a YAML file of these options) and ``--print_config``; ``doc``,
    the script's docstring, heads the help. Bad options, and any error a user can fix, are one line
    with exit status 2."""
    with reported_errors(), option_errors(args):
        return auto_cli(component, args=args, description=doc, **SCRIPT_PARSING)


def command_parser(command: str, description: str | None) -> ArgumentParser:
    """A jsonargparse parser for a speechrnn command with ``--config`` (YAML files with any of its
    options, several compose in order) and ``--print_config``; errors raise instead of exiting, for
    :func:`parse_command` to report in one line."""
    parser = ArgumentParser(
        prog=prog(command), description=description, exit_on_error=False, formatter_class=RawDescription
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options.")
    return parser


def parse_command(parser: ArgumentParser, args: list[str] | None = None) -> Any:
    """``parser.parse_args(args)`` with one-line errors (:func:`option_errors`)."""
    with option_errors(args):
        return parser.parse_args(args)


def run_function(command: str, function: Callable[..., Any], args: list[str] | None = None) -> Any:
    """Parse ``args`` into the parameters of a typed ``function`` (its docstring is the help) and call
    it: the commands whose options are one function's arguments (``export``, ``generate``)."""
    summary = (inspect.getdoc(function) or "").split("\n\n")[0]
    parser = command_parser(command, summary)
    parser.add_function_arguments(function, as_positional=False)
    config = parse_command(parser, args)
    options = {k: v for k, v in vars(config.clone()).items() if k not in ("config", "__default_config__")}
    return function(**options)


def run_config(checkpoint: Path) -> Path | None:
    """The ``config.yaml`` of the run a checkpoint belongs to (``version_N/checkpoints/x.ckpt``)."""
    candidate = checkpoint.resolve().parent.parent / "config.yaml"
    return candidate if candidate.is_file() else None


def read_yaml(path: Path, what: str = "config") -> Any:
    """A YAML file read safely; a file that cannot be read or parsed is one :class:`ConfigError` line
    naming it."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the {what}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: the {what} is not valid YAML{where}: {problem}") from None


def option_values(args: list[str], option: str) -> list[str]:
    """The values given to ``--option`` in ``args`` (``--option X`` or ``--option=X``), in order."""
    values = []
    for position, word in enumerate(args):
        if word == option and position + 1 < len(args):
            values.append(args[position + 1])
        elif word.startswith(option + "="):
            values.append(word.split("=", 1)[1])
    return values


def parse_with_run_data(parser: ArgumentParser, args: list[str] | None = None) -> Any:
    """Parse the options of a command that reads a checkpoint and its run's data (``evaluate``,
    ``adapt``): the run's ``config.yaml`` beside the checkpoint gives the defaults of ``--data.*``,
    which the command line or a ``--config`` file then override. A config that cannot be read is
    one line naming it."""
    args = sys.argv[1:] if args is None else list(args)
    checkpoints = option_values(args, "--ckpt")
    if not checkpoints:
        for file in option_values(args, "--config"):
            given = read_yaml(Path(file)) if Path(file).is_file() else None
            if isinstance(given, dict) and given.get("ckpt"):
                checkpoints = [str(given["ckpt"])]
    if checkpoints and (config := run_config(Path(checkpoints[-1]))) is not None:
        saved = read_yaml(config, "run's config")
        if not isinstance(saved, dict) or not isinstance(saved.get("data"), dict):
            raise ConfigError(f"{config}: the run's config has no data section; give the data with --data CLASS")
        parser.set_defaults({"data": saved["data"]})
    config = parse_command(parser, args)
    if config.data is None:
        raise ConfigError("no run config.yaml beside the checkpoint; give the data with --data CLASS --data.*")
    return config


def resolve_device(device: str) -> str:
    """``auto``: cuda when available, else cpu; anything else as given."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


RUN_VERSION_ENV = "SPEECHRNN_RUN_VERSION"
"""Carries the run folder's version from rank 0 to the processes Lightning starts for DDP."""


def reserve_run_version(root: str | os.PathLike) -> int:
    """Create ``root/lightning_logs/version_N`` for the next free ``N`` and return ``N``.

    Creating a folder is atomic, so runs started at the same moment under the same root get
    different folders (Lightning's own choice lists the folders, and two runs can both pick N).
    """
    logs = Path(root) / "lightning_logs"
    logs.mkdir(parents=True, exist_ok=True)
    taken = [int(match[1]) for p in logs.iterdir() if (match := re.fullmatch(r"version_(\d+)", p.name))]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (logs / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


def run_version(root: str | os.PathLike) -> int | None:
    """The run folder's version: reserved by global rank 0, inherited by the ranks it starts (others
    leave it to Lightning, which broadcasts rank 0's folder)."""
    if rank_zero_only.rank == 0:
        version = reserve_run_version(root)
        os.environ[RUN_VERSION_ENV] = str(version)
        return version
    inherited = os.environ.get(RUN_VERSION_ENV)
    return int(inherited) if inherited is not None else None


def check_trainer_plan(trainer: Any) -> None:
    """Options that would train nothing, caught before any data is prepared."""
    for option, value in (("max_epochs", trainer.max_epochs), ("max_steps", trainer.max_steps)):
        if value == 0:
            raise ConfigError(f"--trainer.{option} 0 trains nothing (the report would describe an untrained model)")
    if trainer.limit_train_batches == 0:
        raise ConfigError("--trainer.limit_train_batches 0 trains nothing")


def record_data_choices(config: Any, datamodule: Any) -> None:
    """Write the DataModule's decisions on options left unset (normalisation, augmentation, feature
    path) into the run's ``config`` namespace, so ``config.yaml`` replays the same run and the
    commands that reuse it (evaluate, adapt) read the data as it was trained."""
    data = getattr(config, "data", None)
    init_args = getattr(data, "init_args", None)
    if init_args is None:
        return
    if getattr(init_args, "augment", False) is None and hasattr(datamodule, "augment"):
        init_args.augment = jsonargparse.Namespace(**dataclasses.asdict(datamodule.augment))
    if getattr(init_args, "on_device_features", False) is None and hasattr(datamodule, "on_device_features"):
        init_args.on_device_features = bool(datamodule.on_device_features)
    features = getattr(init_args, "features", None)
    settings = getattr(datamodule, "feature_settings", None)
    if features is not None and getattr(features, "normalize", None) == "auto" and settings is not None:
        features.normalize = settings.normalize


class ResolvedConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` with what the DataModule decided for the options left to it."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not self.already_saved and trainer.datamodule is not None:
            record_data_choices(self.config, trainer.datamodule)
        super().setup(trainer, pl_module, stage)


class SpeechRNNCLI(LightningCLI):
    """LightningCLI over :class:`RNNClassifier` and any speechrnn DataModule (``--data CLASS``).

    The DataModule's ``feature_dim``, ``num_classes`` and ``class_names`` flow into the model, so
    they are never typed. The kept checkpoint (the last epoch's unless ``--checkpoint.monitor`` says
    otherwise) and early stopping, which waits for the learning rate to anneal
    (:class:`~speechrnn.callbacks.AnnealedEarlyStopping`), are configurable as ``--checkpoint.*`` and
    ``--early_stopping.*``; ``last.ckpt`` holds the latest epoch. Without
    ``--trainer.max_epochs`` the number of epochs follows the training split's size
    (:class:`~speechrnn.callbacks.TrainingBudget`).
    """

    def __init__(self, args: Any = None, run: bool = False, **kwargs: Any) -> None:
        defaults = {**trainer_defaults(), "max_epochs": None}  # TrainingBudget chooses the epochs
        defaults.update(kwargs.pop("trainer_defaults", {}))
        parser_kwargs = {"exit_on_error": False, "prog": prog("fit"), **kwargs.pop("parser_kwargs", {})}
        jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=shows_help(args))
        try:
            super().__init__(
                RNNClassifier,
                SequenceDataModuleBase,
                subclass_mode_data=True,
                trainer_defaults=defaults,
                seed_everything_default=0,
                parser_kwargs=parser_kwargs,
                save_config_callback=ResolvedConfigCallback,
                save_config_kwargs={"overwrite": True},
                args=args,
                run=run,
                **kwargs,
            )
        finally:
            jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The Trainer, with ``last.ckpt`` rewritten after every epoch (so ``--ckpt_path last`` resumes
        from the latest state, not the best), rich's progress bar unless progress bars are off, a run
        folder of its own even when several runs start at once under the same root, and, unless
        ``--trainer.profiler`` names one, a profiler that costs nothing per hook."""
        config = self._get(self.config_init, "trainer", default={})
        budget = config.get("max_epochs") is None and config.get("max_steps") in (None, -1)
        if budget:
            kwargs["max_epochs"] = TrainingBudget().max_epochs  # an upper bound; lowered in setup
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            root = config.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = TensorBoardLogger(save_dir=root, version=run_version(root))
        if config.get("profiler") is None and "profiler" not in kwargs:
            kwargs["profiler"] = QuietProfiler()
        if "callbacks" not in kwargs:
            callbacks = [*(config.get("callbacks") or []), EpochTimer(), *([TrainingBudget()] if budget else [])]
            if config.get("enable_checkpointing") is not False:
                callbacks.append(LastCheckpoint())
            if config.get("enable_progress_bar") is not False:
                callbacks.append(ThrottledProgressBar(leave=True))
            kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    @property
    def best_checkpoint(self) -> ModelCheckpoint:
        """The callback keeping the checkpoint ``fit`` tests (``--checkpoint.*``): the last epoch's, or
        the best by ``--checkpoint.monitor``."""
        return self._get(self.config_init, "checkpoint")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Resume from this checkpoint ('last' resumes the latest run state).",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(AnnealedEarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "data": {"class_path": DEFAULT_DATA},
                # The kept model is the last epoch's, when the one-cycle schedule has annealed: on new
                # voices validation loss rises from overconfidence while accuracy still climbs, and the
                # last epoch beat the best by validation loss or accuracy wherever it was measured
                # (benchmarks/README.md, "Defaults against recipes"). --checkpoint.monitor val/acc
                # keeps the best by validation instead.
                "checkpoint.monitor": None,
                "checkpoint.mode": "min",
                "checkpoint.save_last": False,
                "checkpoint.filename": "epoch{epoch:03d}-val_loss{val/loss:.4f}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "early_stopping.patience": 5,
                # Both watch validation, so they act when it has run: a run that --trainer.max_steps
                # ends mid-epoch has no validation loss for its last epoch.
                "checkpoint.save_on_train_epoch_end": False,
                "early_stopping.check_on_train_epoch_end": False,
            }
        )
        parser.link_arguments("data.feature_dim", "model.input_size", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.task", "model.task", apply_on="instantiate")
