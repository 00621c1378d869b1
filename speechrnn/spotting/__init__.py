"""Keyword spotting in continuous audio: a model's posterior track over audio of any length
(:mod:`~speechrnn.spotting.scoring`, read block by block by :mod:`~speechrnn.spotting.blocks`),
keyword events from it (:mod:`~speechrnn.spotting.events`), and the calibration a checkpoint stores
(:mod:`~speechrnn.spotting.settings`). ``speechrnn spot`` is the command.

The names below are imported from their modules when first used, so importing one module of this
package (a pure-numpy one, say) does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Event": "events",
    "detect_events": "events",
    "PosteriorTrack": "track",
    "score_blocks": "scoring",
    "score_file": "scoring",
    "SpottingCalibration": "settings",
    "stored_spotting": "settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
