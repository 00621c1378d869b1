"""``speechrnn build-cache FIT_CONFIG...``: build a corpus's feature cache ahead of
training (on every core for a corpus of 1,024 files or more), with a progress bar.

Training then reads the cache (``data/cache/<dataset>-<hash>/``) instead of decoding audio. With
``--format litdata`` the features (the same cache's) are also written as LitData shards to a new
local folder or a bucket, from which ``--data ShardedDataModule --data.path DIR_OR_URL`` trains on
any number of machines without the audio::

    speechrnn build-cache FIT_CONFIG --format litdata --output s3://bucket/corpus

Several FIT_CONFIG files compose in order, as ``speechrnn fit --config A --config B`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from speechrnn.data.storage.shards import DEFAULT_CHUNK_BYTES, write_shards
from speechrnn.errors import ConfigError, run_entry_point
from speechrnn.stages import datamodule_from_config, prepare


def build_cache(
    fit_configs: list[Path],
    workers: int | None = None,
    format: Literal["memmap", "litdata"] = "memmap",
    output: str | None = None,
    chunk_bytes: int | str = DEFAULT_CHUNK_BYTES,
) -> dict[str, Any]:
    """Build the feature cache of the corpus a fit config names (and LitData shards with ``litdata``).

    Args:
        fit_configs: Fit configs (YAML) whose data section names the corpus; later ones override.
        workers: Processes that compute features (default: one per core for 1,024 files or more where
            processes are forked, as ``fit``'s own cache build).
        format: ``memmap``: the local feature cache only; ``litdata``: also shards for
            ``ShardedDataModule`` (needs ``output``).
        output: With ``litdata``: a new folder, or a bucket URL (``s3://``, ``gs://``, ``r2://``).
        chunk_bytes: With ``litdata``: the size of each chunk (bytes, or LitData's ``"64MB"`` form).

    Returns:
        What was built, as printed (JSON).
    """
    if format == "litdata" and not output:
        raise ConfigError("--format litdata needs --output FOLDER_OR_URL")
    if format == "memmap":
        result = prepare(fit_configs, workers)
    else:
        datamodule = datamodule_from_config(fit_configs, cache_workers=workers)
        index = write_shards(datamodule, output, chunk_bytes=chunk_bytes)
        result = {"class": index.source, "examples": index.counts, "shards": index.location}
    print(json.dumps(result, indent=2))
    return result


def main(args: list[str] | None = None) -> dict[str, Any]:
    from speechrnn.cli import command_parser, parse_command

    parser = command_parser("build-cache", __doc__)
    parser.add_argument("fit_configs", type=Path, nargs="+", metavar="FIT_CONFIG", help="fit configs (YAML)")
    parser.add_function_arguments(build_cache, skip={"fit_configs"})
    options = parse_command(parser, args).as_dict()
    options.pop("config", None)
    return build_cache(**options)


if __name__ == "__main__":
    run_entry_point(main)
