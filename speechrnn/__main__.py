"""``speechrnn COMMAND [OPTIONS]``: every speechrnn command behind one program.

``speechrnn fit`` is ``python -m speechrnn.fit``, and so on; each command has ``--help``, ``--config``
and ``--print_config``. The commands are imported only when run, so ``speechrnn --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple, NoReturn

from speechrnn.errors import EXIT_USER_ERROR, run_entry_point


class Command(NamedTuple):
    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "fit": Command("speechrnn.fit", "train a model (LightningCLI), test the kept checkpoint, write its report"),
    "evaluate": Command("speechrnn.evaluate", "the evaluation report of a checkpoint on a split of its data"),
    "predict": Command("speechrnn.predict", "classify audio files or folders with a checkpoint"),
    "spot": Command("speechrnn.spot", "find keywords in recordings of any length: events with times and scores"),
    "serve": Command("speechrnn.serve", "serve a checkpoint over HTTP and WebSocket, with a live microphone page"),
    "adapt": Command("speechrnn.adapt", "adapt a model to new voices from their unlabelled recordings"),
    "export": Command("speechrnn.export", "export a checkpoint to ONNX or TorchScript, front end included"),
    "generate": Command("speechrnn.generate", "sample text from a character model"),
    "build-cache": Command("speechrnn.build_cache", "build a corpus's feature cache (and LitData shards) ahead"),
}
"""Command name -> the module whose ``main(args)`` runs it (``python -m`` that module works too)."""


def usage() -> str:
    """The program's help: its commands, one line each."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return (
        "usage: speechrnn COMMAND [OPTIONS]   (speechrnn COMMAND --help for its options)\n\n"
        "Recurrent networks that classify speech and other sequences.\n\ncommands:\n" + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the command named by the first argument with the rest of the arguments."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else EXIT_USER_ERROR)
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; the commands are {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    from speechrnn.cli import INVOKED_AS

    INVOKED_AS["prefix"] = "speechrnn "
    module = importlib.import_module(COMMANDS[name].module)
    run_entry_point(lambda: module.main(args))


if __name__ == "__main__":
    main()
