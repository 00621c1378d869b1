"""Where recorded corpora (FSDD, Speech Commands) are found or downloaded: ``$SPEECHRNN_DATA``,
by default the ``data/`` folder of the working directory.

``SPEECHRNN_DATA=/datasets python -m speechrnn.fit --data FSDDDataModule`` reads
``/datasets/fsdd/recordings``. Generated data (the embedded corpus) and feature caches stay under
``data/`` (``--data.root``, ``--data.cache_dir``), so a read-only dataset folder is never written.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "SPEECHRNN_DATA"


def corpus_root(*parts: str) -> Path:
    """``$SPEECHRNN_DATA/<parts>`` (``data/<parts>`` when the variable is unset or empty)."""
    return Path(os.environ.get(DATA_ENV) or "data").joinpath(*parts)
