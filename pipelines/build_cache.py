"""Build a corpus's feature cache ahead of training, on all cores, with a progress bar.

    python pipelines/build_cache.py --config pipelines/configs/fsdd.yaml [--workers 8]

Training then reads the cache (``data/cache/<dataset>-<hash>/``) instead of decoding audio.
"""

from __future__ import annotations

import argparse
import json

from speechrnn.pipelines import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a fit config (YAML) whose data section names the corpus")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args()
    print(json.dumps(prepare(args.config, args.workers), indent=2))


if __name__ == "__main__":
    main()
