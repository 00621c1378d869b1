"""``speechrnn serve --ckpt CKPT``: a checkpoint behind an HTTP server, with a live microphone page.

The checkpoint loads once; answers come from the graphs ``predict`` and ``spot`` use, so they are
theirs (``predict``'s probabilities up to float rounding, ``spot``'s events with its thresholds: the
checkpoint's calibration unless ``--threshold``/``--thresholds`` say otherwise).

    speechrnn serve --ckpt last.ckpt                        # http://127.0.0.1:8000/ : the live page
    curl -F file=@clip.wav 127.0.0.1:8000/predict           # top-3 labels and probabilities
    curl -F file=@meeting.wav 127.0.0.1:8000/spot           # keyword events
    curl 127.0.0.1:8000/metadata                            # labels, rate, features, model size

Endpoints: ``POST /predict`` (``?top_k=N``; concurrent requests are classified in batches), ``POST
/spot``, WebSocket ``/stream?rate=HZ&format=f32|s16`` (mono PCM chunks in; ``labels`` of every new
window and keyword ``event`` messages out as they happen; a text ``end`` ends it), ``GET /health``,
``GET /metadata`` and ``GET /`` (microphone -> WebSocket -> labels and events; a file upload).
Bad requests get ``{"error": ..., "status": ...}``: empty (400), not audio (415), too large or too
long (413), a lying header or unusable audio (422), too many open streams (503). Uploads are read in
memory and never written to disk. It listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

from speechrnn.cli import command_parser, parse_command, resolve_device
from speechrnn.errors import ConfigError, run_entry_point
from speechrnn.spot import LABEL_YAML
from speechrnn.spotting.scoring import Mode


def serve(
    ckpt: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    max_upload_mb: float = 20.0,
    max_seconds: float = 600.0,
    max_streams: int = 8,
    max_batch_size: int = 16,
    batch_wait_ms: float = 5.0,
    speaker: str | None = None,
    hop_s: float | None = None,
    window_s: float | None = None,
    smoothing_s: float | None = None,
    refractory_s: float | None = None,
    threshold: float | None = None,
    thresholds: dict[str, float] | None = None,
    temperature: float | None = None,
    mode: Mode | None = None,
) -> int:
    """Serve a checkpoint over HTTP until interrupted.

    Args:
        ckpt: Checkpoint written by ``speechrnn fit`` (a classifier of audio).
        host: Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
        port: Port to listen on.
        device: Torch device to run on (``auto``: cuda when available).
        max_upload_mb: Largest request body (MiB); larger ones get 413 before being read whole.
        max_seconds: Longest upload (seconds of audio, read from its header before decoding); 413 beyond.
        max_streams: WebSocket streams open at once; one more gets 503.
        max_batch_size: Clips classified in one forward pass.
        batch_wait_ms: How long a clip waits for others to join its batch (milliseconds).
        speaker: For a model normalised per speaker: a voice of its training corpus whose statistics
            normalise live streams (uploads use their own, as ``predict`` does).
        hop_s: Spotting: seconds between scored windows (default: the calibration's, else 0.1).
        window_s: Spotting: seconds each score reads (default: the calibration's, else the training clips').
        smoothing_s: Spotting: posteriors averaged over this many seconds (default: calibration's, else 0.3).
        refractory_s: Spotting: runs of one class closer than this are one event (default: calibration's, else 1).
        threshold: Spotting: threshold for every class (default: the calibrated ones, else 0.5).
        thresholds: Spotting: per-class thresholds, e.g. ``{yes: 0.7}``, over the others.
        temperature: Spotting: softmax temperature (default: the calibrated one, else 1).
        mode: Spotting: ``window``, ``stream`` or ``auto`` (as ``speechrnn spot --mode``).

    Returns:
        The process exit status.
    """
    for name, value in (("max_upload_mb", max_upload_mb), ("max_seconds", max_seconds)):
        if not value > 0:
            raise ConfigError(f"--{name} must be > 0, got {value}")
    if not batch_wait_ms >= 0:
        raise ConfigError(f"--batch_wait_ms must be >= 0, got {batch_wait_ms}")
    for name, value in (("max_streams", max_streams), ("max_batch_size", max_batch_size)):
        if value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0-65535, got {port}")
    try:
        from speechrnn.serving.app import ServeLimits, create_app
        from speechrnn.serving.model import ServedModel, SpotOptions
        from speechrnn.serving.server import run
    except ImportError as error:
        raise ConfigError(
            f"serving needs the server stack ({error.name} is missing): pip install 'speechrnn[serve]'"
        ) from None
    spotting = SpotOptions(hop_s, window_s, smoothing_s, refractory_s, threshold, thresholds, temperature, mode)
    served = ServedModel(ckpt, resolve_device(device), spotting, speaker)
    limits = ServeLimits(
        max_upload_bytes=round(max_upload_mb * 2**20), max_seconds=max_seconds, max_streams=max_streams,
        max_batch_size=max_batch_size, batch_wait_s=batch_wait_ms / 1000,
    )  # fmt: skip
    print(f"serving {ckpt} on http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr)
    run(create_app(served, limits), host, port)
    return 0


def main(args: list[str] | None = None) -> int:
    parser = command_parser("serve", __doc__)
    parser.parser_mode = LABEL_YAML
    parser.add_function_arguments(serve, as_positional=False)
    config = parse_command(parser, args)
    options = {k: v for k, v in vars(config.clone()).items() if k not in ("config", "__default_config__")}
    return serve(**options)


if __name__ == "__main__":
    run_entry_point(main)
