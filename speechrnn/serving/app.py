"""The FastAPI application of ``speechrnn serve``: ``POST /predict``, ``POST /spot``, WebSocket
``/stream``, ``GET /health``, ``GET /metadata`` and the live page at ``GET /``.

Every refused request gets ``{"error": message, "status": code}`` and the server goes on serving.
Uploads are read in memory (:mod:`~speechrnn.serving.uploads`); decoding, resampling and spotting run
in worker threads, clip classification in batches (:mod:`~speechrnn.serving.batching`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import anyio
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from speechrnn.audio_io import AudioBytes, AudioError
from speechrnn.serving.batching import MicroBatcher
from speechrnn.serving.model import ServedModel
from speechrnn.serving.stream_state import KeywordStream, StreamError
from speechrnn.serving.uploads import RequestError, read_body, uploaded_audio


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the server."""

    max_upload_bytes: int = 20 * 2**20
    """Largest request body (bytes); a larger one is refused with 413 before it is read whole."""
    max_seconds: float = 600.0
    """Longest upload (seconds of audio, from its header, before it is decoded): 413 beyond."""
    max_streams: int = 8
    """Open WebSocket streams at once; one more is refused with 503."""
    max_chunk_bytes: int = 2**20
    """Largest WebSocket message (about 5 s of 48 kHz float32)."""
    max_batch_size: int = 16
    """Clips classified in one forward pass."""
    batch_wait_s: float = 0.005
    """How long a clip waits for others to join its batch."""


def error_response(error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def create_app(served: ServedModel, limits: ServeLimits = ServeLimits()) -> FastAPI:
    """The application serving ``served`` under ``limits``."""
    batcher: MicroBatcher[tuple[Any, Any], dict[str, float]] = MicroBatcher(
        served.probabilities, limits.max_batch_size, limits.batch_wait_s
    )
    state = {"streams": 0, "requests": 0, "errors": 0}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="speechrnn", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served, app.state.limits, app.state.counters, app.state.batcher = served, limits, state, batcher

    @app.exception_handler(RequestError)
    async def refused(_: Request, error: RequestError) -> JSONResponse:
        state["errors"] += 1
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return error_response(RequestError(error.status_code, str(error.detail)))

    async def upload(request: Request) -> AudioBytes:
        state["requests"] += 1
        body = await read_body(request, limits.max_upload_bytes)
        return uploaded_audio(body, request.headers.get("content-type"), request.query_params.get("name", "upload"))

    async def decoded(audio: AudioBytes) -> Any:
        try:
            return await anyio.to_thread.run_sync(served.waveform, audio, limits.max_seconds)
        except AudioError as error:
            raise RequestError.from_audio(error) from None

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("speechrnn.serving").joinpath("page/index.html").read_text("utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "open_streams": state["streams"], "requests": state["requests"]}

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return {
            **served.metadata(),
            "limits": {
                "max_upload_bytes": limits.max_upload_bytes, "max_seconds": limits.max_seconds,
                "max_streams": limits.max_streams, "max_batch_size": limits.max_batch_size,
            },
        }  # fmt: skip

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        """An audio file -> its ``top_k`` labels and probabilities (``?top_k=N``, 0: all)."""
        top_k = query_int(request, "top_k", 3)
        audio = await upload(request)
        waveform = await decoded(audio)
        try:
            statistics = await anyio.to_thread.run_sync(served.clip_statistics, audio)
        except AudioError as error:
            raise RequestError.from_audio(error) from None
        ranked = list((await batcher.submit((waveform, statistics))).items())
        ranked = ranked[:top_k] if top_k > 0 else ranked
        return {
            "file": audio.name,
            "label": ranked[0][0],
            "top": [{"label": label, "probability": probability} for label, probability in ranked],
        }

    @app.post("/spot")
    async def spot(request: Request) -> dict[str, Any]:
        """A recording -> its keyword events, as ``speechrnn spot --format jsonl`` finds them."""
        audio = await upload(request)
        waveform = await decoded(audio)
        events, seconds = await anyio.to_thread.run_sync(served.spot, waveform, audio.name)
        return {
            "file": audio.name,
            "seconds": round(seconds, 3),
            "events": [
                {"start": round(e.start, 3), "end": round(e.end, 3), "label": e.label, "score": round(e.score, 4)}
                for e in events
            ],
        }

    @app.websocket("/stream")
    async def stream(websocket: WebSocket) -> None:
        """PCM chunks in (``?rate=HZ&format=f32|s16``, mono), ``labels`` and ``event`` messages out;
        a text message ``end`` ends the stream (its last events and ``end`` come back)."""
        if state["streams"] >= limits.max_streams:
            refusal = RequestError(503, f"too many open streams (the limit is {limits.max_streams}); try again later")
            await websocket.send_denial_response(error_response(refusal))
            return
        try:
            rate = int(websocket.query_params.get("rate", served.rate))
            live = KeywordStream(served, rate, websocket.query_params.get("format", "f32"))  # type: ignore[arg-type]
        except (ValueError, StreamError) as error:
            await websocket.send_denial_response(error_response(RequestError(400, str(error))))
            return
        state["streams"] += 1
        try:
            await websocket.accept()
            hop_s, window_s = served.frame_seconds
            await websocket.send_json(
                {"type": "ready", "sample_rate": served.rate, "hop_s": hop_s, "window_s": window_s,
                 "classes": served.class_names, "thresholds": served.thresholds}
            )  # fmt: skip
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    if message["text"].strip().lower() in ("end", '{"type": "end"}', '{"type":"end"}'):
                        for reply in await anyio.to_thread.run_sync(live.finish):
                            await websocket.send_json(reply)
                        await websocket.close()
                        return
                    raise StreamError("text messages other than 'end' are not understood; send PCM as binary")
                chunk = message.get("bytes") or b""
                if len(chunk) > limits.max_chunk_bytes:
                    raise StreamError(f"a chunk of {len(chunk)} bytes is over the limit of {limits.max_chunk_bytes}")
                for reply in await anyio.to_thread.run_sync(live.push, chunk):
                    await websocket.send_json(reply)
        except StreamError as error:
            with contextlib.suppress(Exception):
                await websocket.send_json({"type": "error", "error": str(error), "status": 400})
                await websocket.close(code=1007, reason=str(error)[:120])
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away mid-stream: its state goes with it
        finally:
            state["streams"] -= 1

    return app


def query_int(request: Request, name: str, default: int) -> int:
    """An integer query parameter; anything else is a 400 naming it."""
    value = request.query_params.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise RequestError(400, f"{name} must be an integer, got {value!r}") from None
