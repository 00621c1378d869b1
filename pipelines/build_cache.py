"""Build a corpus's feature cache ahead of training, on all cores, with a progress bar.

    python pipelines/build_cache.py --config pipelines/configs/fsdd.yaml [--workers 8]

Training then reads the cache (``data/cache/<dataset>-<hash>/``) instead of decoding audio.

With ``--format litdata`` the features (the same cache's) are also written as LitData shards to a new
local folder or a bucket, from which ``--data ShardedDataModule --data.path DIR_OR_URL`` trains on
any number of machines without the audio:

    python pipelines/build_cache.py --config CONFIG --format litdata --output s3://bucket/corpus
"""

from __future__ import annotations

import argparse
import json

from speechrnn.data.storage.shards import DEFAULT_CHUNK_BYTES, write_shards
from speechrnn.errors import run_entry_point
from speechrnn.stages import cache_workers, datamodule_from_config, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a fit config (YAML) whose data section names the corpus")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument(
        "--format", choices=("memmap", "litdata"), default="memmap",
        help="memmap: the local feature cache only; litdata: also shards for ShardedDataModule (needs --output)",
    )  # fmt: skip
    parser.add_argument("--output", help="--format litdata: a new folder, or a bucket URL (s3://, gs://, r2://)")
    parser.add_argument("--chunk-bytes", default=DEFAULT_CHUNK_BYTES, help="--format litdata: size of each chunk")
    args = parser.parse_args()
    if args.format == "memmap":
        print(json.dumps(prepare(args.config, args.workers), indent=2))
        return
    if not args.output:
        parser.error("--format litdata needs --output FOLDER_OR_URL")
    datamodule = datamodule_from_config(args.config, cache_workers=cache_workers(args.workers))
    index = write_shards(datamodule, args.output, chunk_bytes=args.chunk_bytes)
    print(json.dumps({"class": index.source, "examples": index.counts, "shards": index.location}, indent=2))


if __name__ == "__main__":
    run_entry_point(main)
