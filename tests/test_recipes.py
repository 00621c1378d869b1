"""Every shipped recipe (``pipelines/configs/*.yaml``) runs as its header says: the ``python -m
speechrnn.fit`` command in its comments parses with the fit's parser and builds the DataModule and
the model (no training), and the pipelines' stages compose the recipes to the same data as the fit."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from speechrnn.cli import SpeechRNNCLI
from speechrnn.stages import config_files, data_section

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "pipelines" / "configs").glob("*.yaml"))
CPU = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.devices", "1"]
COMMAND = re.compile(r"^#\s+python -m speechrnn\.fit (.+)$", re.M)


def header_command(recipe: Path) -> list[str]:
    """The options of the one ``python -m speechrnn.fit`` command line in the recipe's header."""
    commands = COMMAND.findall(recipe.read_text())
    assert len(commands) == 1, f"{recipe.name}: a header gives one `#   python -m speechrnn.fit ...` line"
    return shlex.split(commands[0])


def contains(whole: Any, part: Any) -> bool:
    """Whether ``part`` (a mapping, nested) is in ``whole`` with the same values."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(key in whole and contains(whole[key], v) for key, v in part.items())
    return whole == part


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_parses_and_instantiates_as_its_header_says(
    recipe: Path, tmp_path: Path, tiny_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = header_command(recipe)
    configs = [args[i + 1] for i, option in enumerate(args) if option == "--config"]
    assert configs and configs[-1] == f"pipelines/configs/{recipe.name}", "the command ends with the recipe itself"
    args = [str(REPO / a) if a in configs else a for a in args]
    # a recipe for the user's own corpus names a placeholder manifest: give it a real one
    args = [str(tiny_corpus) if i and args[i - 1] == "--data.manifest" else a for i, a in enumerate(args)]
    monkeypatch.setattr(sys, "argv", ["fit"])  # the options are args alone, not pytest's too
    cli = SpeechRNNCLI(args=[*args, *CPU, "--trainer.default_root_dir", str(tmp_path)])
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    assert cli.model.hparams.input_size == cli.datamodule.feature_dim

    composed = data_section([REPO / config for config in configs])
    resolved = cli.config["data"].as_dict()
    assert composed["class_path"] == resolved["class_path"]
    given = {option.split(".")[1] for option in args if option.startswith("--data.")}
    stated = {key: value for key, value in composed.get("init_args", {}).items() if key not in given}
    assert contains(resolved["init_args"], stated), (stated, resolved["init_args"])


def test_a_recipe_on_top_of_another_changes_only_what_it_states() -> None:
    base = REPO / "pipelines" / "configs" / "speech_commands_v2_35.yaml"
    twelve = REPO / "pipelines" / "configs" / "speech_commands_v2_12.yaml"
    alone, both = data_section([base]), data_section([base, twelve])
    assert both["init_args"].pop("task") == "12class" and "task" not in alone["init_args"]
    assert both == alone
    assert data_section([]) == {"class_path": "speechrnn.data.SyntheticCommandsDataModule"}
    assert data_section(base) == alone
    assert config_files([base, twelve]) == [base, twelve] and config_files(None) == []
