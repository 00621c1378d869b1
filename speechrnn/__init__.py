"""speechrnn: recurrent networks (RNN, GRU, LSTM) that classify speech and other sequences."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from speechrnn.features import FeatureSettings
    from speechrnn.models import RNNClassifier

__all__ = ["FeatureSettings", "RNNClassifier"]
__version__ = "0.1.0"

_LAZY = {"FeatureSettings": "speechrnn.features", "RNNClassifier": "speechrnn.models"}


def __getattr__(name: str) -> Any:
    """``speechrnn.RNNClassifier`` and ``speechrnn.FeatureSettings``, imported on first use, so that
    ``speechrnn --help`` and the light modules start without loading torch."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'speechrnn' has no attribute {name!r}")
