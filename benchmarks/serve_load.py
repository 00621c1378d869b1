"""``speechrnn serve`` under load on localhost: requests per second, latency percentiles, errors and
the server's resident memory, for 1, 8 and 32 concurrent clients; and the latency of a live stream's
chunks.

    python benchmarks/serve_load.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt
    python benchmarks/serve_load.py --requests 200 --clients '[1, 8]'     # a short run (CI)
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients '[8]'   # a server already up

The server runs in a process of its own (``speechrnn serve`` on 127.0.0.1, a free port), so its
memory is its own: sampled from ``/proc`` every 0.2 s, reported after warm-up, at its peak and at the
end of each level. Each level sends ``--requests`` uploads of a ``--clip_s`` clip to ``POST /predict``
from that many concurrent clients (each sends its next request when its last is answered), stopping
early at ``--max_seconds``. The stream test sends ``--stream_chunks`` chunks of one hop (s16 PCM)
over ``/stream`` from each of ``--streams`` concurrent connections, each chunk sent once the last
chunk's ``labels`` message came back: the time from a chunk to its labels is the per-chunk latency.
The client runs on the same machine and takes CPU from the server: figures are a floor. Without
``--ckpt`` a default-size model (GRU 2 x 128, 13 MFCC + deltas) is built untrained: timings only.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from common import command_line, load_line, machine_lines

RATE = 16000


@dataclass
class Options:
    ckpt: str | None = None
    """Checkpoint to serve; None: an untrained default-size model (timings only)."""
    url: str | None = None
    """Load a server that is already running here instead of starting one (no memory figures)."""
    clients: list[int] = field(default_factory=lambda: [1, 8, 32])
    """Concurrent clients of each level."""
    requests: int = 10000
    """Requests sent at each level (fewer if ``max_seconds`` runs out)."""
    max_seconds: float = 300.0
    """Longest a level runs."""
    clip_s: float = 1.0
    """Length of the uploaded clip (16 kHz, 16-bit wav)."""
    streams: list[int] = field(default_factory=lambda: [1, 4])
    """Concurrent WebSocket streams of each stream level."""
    stream_chunks: int = 100
    """Chunks sent per stream."""
    out: str | None = None
    """Write the figures to this JSON file too."""


# --- the server ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def untrained_checkpoint(folder: Path) -> Path:
    """A default-size GRU of the synthetic-commands classes, untrained, saved as ``fit`` saves one."""
    import torch

    from speechrnn.features import FeatureSettings
    from speechrnn.models.classifier import RNNClassifier

    settings = FeatureSettings(sample_rate=RATE, normalize="dataset")
    names = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_", "_silence_"]
    model = RNNClassifier(settings.feature_dim, len(names), class_names=names, hidden_size=128, num_layers=2)
    dim = settings.feature_dim
    model.data_config = {
        "class_names": names, "features": settings.to_dict(), "feature_mean": [0.0] * dim,
        "feature_std": [1.0] * dim, "clip_seconds": 1.0,
    }  # fmt: skip
    path = folder / "untrained.ckpt"
    state = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    torch.save({**state, "data_config": model.data_config, "pytorch-lightning_version": "2.5.0"}, path)
    return path


@contextlib.contextmanager
def started_server(ckpt: str, folder: Path) -> Iterator[tuple[str, int]]:
    """``speechrnn serve`` in a child process on 127.0.0.1: ``(url, pid)``, stopped at the end."""
    port = free_port()
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below
    command = [sys.executable, "-m", "speechrnn", "serve", "--ckpt", ckpt, "--port", str(port), "--max_streams", "64"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {(folder / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in 120 s")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


class MemorySampler:
    """The resident memory (MiB) of process ``pid``, sampled every ``every`` seconds in a thread."""

    def __init__(self, pid: int | None, every: float = 0.2) -> None:
        self.pid, self.every, self.samples = pid, every, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float | None:
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as handle:
                line = next(line for line in handle if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return None
        return int(line.split()[1]) / 1024

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            if (value := self.now()) is not None:
                self.samples.append(value)

    def __enter__(self) -> MemorySampler:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        self.thread.join()


# --- the clients --------------------------------------------------------------------------------------
def wav_bytes(seconds: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def percentiles(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    values = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return {
        "p50_ms": round(float(values[0]), 2),
        "p95_ms": round(float(values[1]), 2),
        "p99_ms": round(float(values[2]), 2),
    }


async def load_level(url: str, clients: int, requests: int, max_seconds: float, clip: bytes) -> dict[str, Any]:
    """``requests`` uploads to ``/predict`` from ``clients`` concurrent clients."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        started = time.perf_counter()
        deadline = started + max_seconds

        async def worker() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                begin = time.perf_counter()
                try:
                    response = await client.post("/predict", files={"file": ("clip.wav", clip, "audio/wav")})
                    if response.status_code != 200 or "label" not in response.json():
                        key = f"status {response.status_code}"
                        errors[key] = errors.get(key, 0) + 1
                        continue
                except httpx.HTTPError as error:
                    errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - begin)

        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": sent,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        **percentiles(latencies),
    }


async def stream_level(url: str, streams: int, chunks: int) -> dict[str, Any]:
    """Per-chunk latency of ``streams`` concurrent WebSocket streams, ``chunks`` chunks each."""
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    errors = 0
    ws_url = url.replace("http://", "ws://") + f"/stream?rate={RATE}&format=s16"

    async def one(seed: int) -> None:
        nonlocal errors
        rng = np.random.default_rng(seed)
        try:
            async with connect(ws_url, max_size=2**22) as socket_:
                ready = json.loads(await socket_.recv())
                hop = round(ready["hop_s"] * RATE)
                window = round(ready["window_s"] * RATE)
                sent = 0
                for _ in range(chunks):
                    chunk = (0.2 * rng.standard_normal(hop) * 32767 / 4).astype("<i2").tobytes()
                    begin = time.perf_counter()
                    await socket_.send(chunk)
                    sent += hop
                    if sent < window:
                        continue
                    while json.loads(await socket_.recv())["type"] != "labels":
                        pass
                    latencies.append(time.perf_counter() - begin)
                await socket_.send("end")
                while json.loads(await socket_.recv())["type"] != "end":
                    pass
        except Exception:  # noqa: BLE001 - counted: a stream that failed
            errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(seed) for seed in range(streams)))
    return {
        "streams": streams,
        "chunks": len(latencies),
        "errors": errors,
        "seconds": round(time.perf_counter() - started, 2),
        **percentiles(latencies),
    }


def measure(options: Options, url: str, pid: int | None) -> dict[str, Any]:
    clip = wav_bytes(options.clip_s)
    asyncio.run(load_level(url, 2, 20, 30, clip))  # warm-up
    levels = []
    for clients in options.clients:
        with MemorySampler(pid) as memory:
            before = memory.now()
            level = asyncio.run(load_level(url, clients, options.requests, options.max_seconds, clip))
            after = memory.now()
        level["rss_mib"] = {
            "before": None if before is None else round(before, 1),
            "peak": round(max(memory.samples), 1) if memory.samples else None,
            "after": None if after is None else round(after, 1),
        }
        levels.append(level)
        print(f"{clients} clients: {level}", file=sys.stderr)
    streams = [asyncio.run(stream_level(url, n, options.stream_chunks)) for n in options.streams]
    return {"predict": levels, "stream": streams, "clip_s": options.clip_s}


def table(result: dict[str, Any]) -> str:
    lines = [
        "| clients | requests | errors | requests/s | p50 ms | p95 ms | p99 ms "
        "| server RSS MiB (before / peak / after) |",
        "|--:|--:|--:|--:|--:|--:|--:|--|",
    ]
    for level in result["predict"]:
        rss = level["rss_mib"]
        lines.append(
            f"| {level['clients']} | {level['requests']} | {level['errors']} | {level['requests_per_s']} | "
            f"{level['p50_ms']} | {level['p95_ms']} | {level['p99_ms']} | "
            f"{rss['before']} / {rss['peak']} / {rss['after']} |"
        )
    lines += ["", "| streams | chunks | errors | p50 ms | p95 ms | p99 ms |", "|--:|--:|--:|--:|--:|--:|"]
    for level in result["stream"]:
        lines.append(
            f"| {level['streams']} | {level['chunks']} | {level['errors']} | {level['p50_ms']} | {level['p95_ms']} | "
            f"{level['p99_ms']} |"
        )
    return "\n".join(lines)


def main(options: Options) -> dict[str, Any]:
    print("\n".join(machine_lines()))
    with tempfile.TemporaryDirectory(prefix="serve-load-") as folder:
        if options.url:
            result = measure(options, options.url.rstrip("/"), None)
        else:
            ckpt = options.ckpt or str(untrained_checkpoint(Path(folder)))
            with started_server(ckpt, Path(folder)) as (url, pid):
                result = measure(options, url, pid)
    result["machine"] = machine_lines()[0]
    print(load_line("at end"))
    print(table(result))
    if options.out:
        from speechrnn.io import atomic_write_json

        atomic_write_json(options.out, result)
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(command_line(Options, __doc__))
