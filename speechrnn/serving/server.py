"""Running the application with uvicorn: in the foreground (``speechrnn serve``), or in a thread of
the calling process for tests and benchmarks (:class:`BackgroundServer`)."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from speechrnn.serving.app import ServeLimits


def uvicorn_config(app: FastAPI, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's settings for the app: WebSocket messages up to the app's chunk limit."""
    limits: ServeLimits = app.state.limits
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, ws_max_size=limits.max_chunk_bytes + 1024,
        timeout_graceful_shutdown=5,
    )  # fmt: skip


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (Ctrl-C)."""
    uvicorn.Server(uvicorn_config(app, host, port)).run()


class BackgroundServer:
    """``with BackgroundServer(app) as server:`` the app listens on ``server.url`` (127.0.0.1, a free
    port) from a thread of this process, and stops when the block ends."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.server = uvicorn.Server(uvicorn_config(app, host, port, log_level))
        self.thread = threading.Thread(target=self.server.run, name="speechrnn-serve", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
