"""What the ``run_*.py`` scripts share: one command line, with ``-- FIT OPTIONS`` for every fit.

A recipe is a fit config in ``configs/`` that states only what it changes against the defaults
(its header says what, and the command that runs it). Several compose as several ``--config``
files of ``python -m speechrnn.fit`` do, each applied over the ones before it, so a variant is a
short file on top of its base (``speech_commands_v2_12.yaml`` on ``speech_commands_v2_35.yaml``);
:func:`speechrnn.stages.data_section` gives the data section they compose to and
:meth:`speechrnn.stages.Pipeline.fit` fits them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any


def command_line(function: Callable[..., Any], doc: str | None, args: Sequence[str] | None = None) -> Any:
    """Call ``function`` with the options of the command line (``args``, by default ``sys.argv``),
    read by jsonargparse (:func:`speechrnn.cli.run_script`); options after ``--`` go to every fit,
    as the function's ``fit_args``."""
    from speechrnn.cli import run_script

    args = list(sys.argv[1:] if args is None else args)
    if "--" in args:
        cut = args.index("--")
        args = [*args[:cut], "--fit_args", json.dumps(args[cut + 1 :])]
    return run_script(function, doc, args)
