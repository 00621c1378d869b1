"""Request bodies read in memory under a size limit (nothing a user sends is written to disk), the
audio file in them, and the HTTP status and one-line JSON error of each bad request."""

from __future__ import annotations

from typing import Any

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from speechrnn.audio_io import AudioBytes, AudioError

STATUS_OF_PROBLEM = {
    "missing": 400,
    "empty": 400,
    "truncated": 400,
    "unreadable": 415,
    "too_long": 413,
    "rate": 422,
    "unusable": 422,
}
"""HTTP status of each kind of :class:`~speechrnn.audio_io.AudioError`: an empty or cut-short body is
a bad request (400), a body that is not audio an unsupported media type (415), audio over the length
limit too large (413), audio that cannot be used (a lying sample rate, silence, too short: 422)."""

FILE_FIELD = "file"
"""The form field that carries the audio (``curl -F file=@clip.wav``)."""


class RequestError(Exception):
    """A request the server refuses: its HTTP ``status`` and the ``message`` of the JSON error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    @classmethod
    def from_audio(cls, error: AudioError) -> RequestError:
        return cls(STATUS_OF_PROBLEM.get(error.problem, 422), str(error))

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, refused with 413 as soon as it is known to exceed ``max_bytes`` (from its
    ``Content-Length``, or while it arrives), and with 400 when the client goes away before its end."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"request of {int(declared)} bytes is over the limit of {max_bytes} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise RequestError(413, f"request is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "the client disconnected before the end of the request") from None
    return b"".join(chunks)


def uploaded_audio(body: bytes, content_type: str | None, name: str = "upload") -> AudioBytes:
    """The audio of a request: the ``file`` field of a ``multipart/form-data`` body (or its only
    file), else the whole body (``curl --data-binary @clip.wav``), named ``name``."""
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        if not body:
            raise RequestError(400, "empty request: send an audio file (curl -F file=@clip.wav URL)")
        return AudioBytes(body, name)
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestError(400, "multipart/form-data without a boundary")
    files = form_files(body, boundary)
    if FILE_FIELD in files:
        filename, data = files[FILE_FIELD]
    elif len(files) == 1:
        filename, data = next(iter(files.values()))
    else:
        raise RequestError(400, f"no audio file in the form: send it as the {FILE_FIELD!r} field")
    return AudioBytes(data, filename or name)


def form_files(body: bytes, boundary: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Field name -> ``(filename, bytes)`` of every part of a multipart body, parsed in memory."""
    parts: dict[str, tuple[str | None, bytes]] = {}
    headers: dict[bytes, bytes] = {}
    field, value = bytearray(), bytearray()
    data = bytearray()

    def header_end() -> None:
        headers[bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    def part_end() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        parts[name] = (filename.decode("utf-8", "replace") if filename is not None else None, bytes(data))
        headers.clear()
        data.clear()

    callbacks = {
        "on_header_field": lambda b, start, end: field.extend(b[start:end]),
        "on_header_value": lambda b, start, end: value.extend(b[start:end]),
        "on_header_end": header_end,
        "on_part_data": lambda b, start, end: data.extend(b[start:end]),
        "on_part_end": part_end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except Exception as error:  # noqa: BLE001 - python-multipart's errors: a malformed body
        raise RequestError(400, f"malformed multipart/form-data body: {error}") from None
    return parts
