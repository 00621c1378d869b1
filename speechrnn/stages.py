"""Building blocks of the scripts in ``pipelines/``: resumable stages around ``speechrnn.fit``.

A pipeline is a list of named stages in a work folder (under ``lightning_logs/pipelines/``).
Each finished stage leaves ``<stage>.done.json`` holding its result, so running the pipeline again
after an interruption skips what is finished; an interrupted fit resumes from its ``last.ckpt``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from speechrnn.io import atomic_write_json, atomic_write_text, read_checkpoint


class Pipeline:
    """Runs stages once each in ``workdir``; results of finished stages are read back, not recomputed."""

    def __init__(self, workdir: str | Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def marker(self, name: str) -> Path:
        return self.workdir / f"{name}.done.json"

    def stage(self, name: str, run: Callable[[], Any]) -> Any:
        marker = self.marker(name)
        if marker.is_file():
            print(f"[{name}] done already, skipped ({marker})")
            return json.loads(marker.read_text())["result"]
        print(f"[{name}] running")
        result = run()
        atomic_write_json(marker, {"stage": name, "result": result})
        return result

    def fit(
        self, name: str, config: str | Path | Sequence[str | Path] | None, overrides: Sequence[str] = ()
    ) -> dict[str, Any]:
        """A ``speechrnn.fit`` run in ``workdir/name`` with ``config`` (one fit config, or several that
        compose in order) and ``overrides``; returns its test metrics, timing, checkpoint and parameter
        count. An interrupted run of this stage resumes from its last checkpoint."""

        def run() -> dict[str, Any]:
            from speechrnn.fit import main

            root = self.workdir / name
            args = [option for path in config_files(config) for option in ("--config", str(path))]
            args += [*overrides, "--trainer.default_root_dir", str(root)]
            if list(root.glob("lightning_logs/version_*/checkpoints/last.ckpt")):
                args += ["--ckpt_path", "last"]
            main(args)
            return summarise_run(latest_run(root))

        return self.stage(name, run)

    def write_table(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]], title: str) -> Path:
        """A Markdown table in ``workdir/name.md``, printed too."""
        text = markdown_table(header, rows, title)
        print(text)
        return atomic_write_text(self.workdir / f"{name}.md", text)


ConfigSource = dict[str, Any] | str | Path | Sequence[str | Path]
"""A fit config: a YAML path, several that compose in order (as ``--config A --config B``), or the
``data`` mapping itself."""


def config_files(config: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """The YAML files of a :data:`ConfigSource` that is not a mapping, in the order they apply."""
    if config is None:
        return []
    return [Path(config)] if isinstance(config, str | Path) else [Path(path) for path in config]


def data_section(config: ConfigSource) -> dict[str, Any]:
    """The ``data`` mapping that a fit config composes to, merged as ``speechrnn.fit`` merges its
    ``--config`` files, over the default corpus when none names one: what the stages that build the
    DataModule without a fit (prepare, build-cache, baselines) take. A file that cannot be read or
    parsed is one :class:`~speechrnn.errors.ConfigError` line naming it."""
    import json

    from jsonargparse import ArgumentParser

    from speechrnn.cli import DEFAULT_DATA, read_yaml
    from speechrnn.data.base import SequenceDataModuleBase

    if isinstance(config, dict):
        return config
    sections: list[Any] = [{"class_path": DEFAULT_DATA}]
    for path in config_files(config):
        content = read_yaml(path)
        sections.append(content.get("data") if isinstance(content, dict) else None)
    options = [option for data in sections if data for option in ("--data", json.dumps(data))]
    parser = ArgumentParser()
    parser.add_subclass_arguments(SequenceDataModuleBase, "data")
    return json.loads(parser.dump(parser.parse_args(options, defaults=False), format="json"))["data"]


def datamodule_from_config(config: ConfigSource, **init_args: Any) -> Any:
    """Instantiate the DataModule of a fit config (:data:`ConfigSource`), with ``init_args``
    overriding the config's."""
    from jsonargparse import ArgumentParser

    from speechrnn.data.base import SequenceDataModuleBase

    data = data_section(config)
    data = {**data, "init_args": {**data.get("init_args", {}), **init_args}}
    parser = ArgumentParser()
    parser.add_subclass_arguments(SequenceDataModuleBase, "data")
    return parser.instantiate_classes(parser.parse_object({"data": data})).data


def prepare(config: ConfigSource, workers: int | None = None, **init_args: Any) -> dict[str, Any]:
    """Download or generate the corpus and build the feature cache its training runs read; ``workers``
    processes build it (None: the DataModule's rule, a process per core for a large corpus,
    :func:`speechrnn.data.storage.feature_cache.default_cache_workers`)."""
    datamodule = datamodule_from_config(config, cache_workers=workers, **init_args)
    if hasattr(datamodule, "training_run"):
        datamodule.training_run = True
    datamodule.prepare_data()
    datamodule.setup("fit")
    return {
        "class": type(datamodule).__name__,
        "examples": {split: int(len(idx)) for split, idx in datamodule.splits.items()},
        "cache": str(getattr(datamodule, "cache", None) and datamodule.cache.directory),
    }


def latest_run(root: Path) -> Path:
    """The newest finished run (one with ``test_metrics.json``) under ``root/lightning_logs``."""
    runs = sorted(root.glob("lightning_logs/version_*"), key=lambda p: int(p.name.split("_")[1]))
    finished = [run for run in runs if (run / "test_metrics.json").is_file()]
    if not finished:
        raise FileNotFoundError(f"no finished run under {root}/lightning_logs; run `python -m speechrnn.fit` first")
    return finished[-1]


def summarise_run(run: Path) -> dict[str, Any]:
    """Test metrics, epoch timing, best checkpoint and parameter count of a finished run folder."""
    saved = json.loads((run / "test_metrics.json").read_text())
    checkpoint = saved["checkpoint"] or str(run / "checkpoints" / "last.ckpt")
    state = read_checkpoint(checkpoint)["state_dict"]
    parameters = sum(v.numel() for k, v in state.items() if k.startswith("net."))
    durations = saved.get("timing", {}).get("epoch_seconds", [])
    report = run / "report_test" / "report.json"
    return {
        "run": str(run),
        "checkpoint": checkpoint,
        "metrics": saved["metrics"],
        "parameters": parameters,
        "epochs": len(durations),
        "median_epoch_seconds": statistics.median(durations) if durations else None,
        "report": json.loads(report.read_text()) if report.is_file() else None,
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
