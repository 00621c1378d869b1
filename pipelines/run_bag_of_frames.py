"""Bag-of-frames baseline beside the recurrent model, on the same split.

Trains logistic regression on per-clip MFCC mean and standard deviation (order-blind) and prints
its test accuracy next to the BiGRU's from a finished ``speechrnn.fit`` run (the latest under
``lightning_logs/`` unless ``--run`` says otherwise). The DataModule is rebuilt from that run's
``config.yaml``, so both see exactly the same files and split.

    python pipelines/run_bag_of_frames.py [--run lightning_logs/version_N]
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from recipes import command_line

from speechrnn.baselines import bag_of_frames_accuracy
from speechrnn.stages import datamodule_from_config, latest_run


def main(run: Path | None = None) -> dict[str, float]:
    """Print the bag-of-frames baseline's test accuracy beside the run's; returns both.

    Args:
        run: Run folder of a finished ``python -m speechrnn.fit`` (default: the latest under
            ``lightning_logs/``).
    """
    run = Path(run) if run is not None else latest_run(Path.cwd())
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    features = {**data.get("init_args", {}).get("features", {}), "normalize": "none"}
    datamodule = datamodule_from_config(data, features=features)
    baseline = bag_of_frames_accuracy(datamodule)
    recurrent = json.loads((run / "test_metrics.json").read_text())["metrics"]["test/acc"]
    print(f"run: {run}")
    print(f"{'model':<36}{'test accuracy':>14}")
    print(f"{'bag of frames (mean+std, logreg)':<36}{baseline['test']:>14.4f}")
    print(f"{'recurrent model (speechrnn.fit)':<36}{recurrent:>14.4f}")
    return {"bag_of_frames": baseline["test"], "recurrent": recurrent}


if __name__ == "__main__":
    command_line(main, __doc__)
