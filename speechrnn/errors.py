"""Errors a user can fix (bad input, impossible options), and how entry points report them.

Entry points print a :class:`UserInputError` as one line naming the file or option and exit with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

EXIT_USER_ERROR = 2


class UserInputError(ValueError):
    """Input or configuration that cannot work; the message says which file or option, and why."""


class ConfigError(UserInputError):
    """An option (or combination of options) that cannot work; found before any expensive work."""


class MissingInputError(UserInputError, FileNotFoundError):
    """A file or folder the options name does not exist."""


def user_message(error: BaseException) -> str:
    """The message of ``error`` without the wrapping jsonargparse adds around a constructor's own
    error (a subclass union, the whole config dumped)."""
    while error.__cause__ is not None and _raised_in_jsonargparse(error):
        error = error.__cause__
    return str(error).strip() or type(error).__name__


def _raised_in_jsonargparse(error: BaseException) -> bool:
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and f"{os.sep}jsonargparse{os.sep}" in frame.tb_frame.f_code.co_filename


@contextlib.contextmanager
def checked_options() -> Iterator[None]:
    """Around parsing and instantiating options: a constructor's ``ValueError`` (which jsonargparse
    wraps in a union error and a dump of the whole config) becomes a :class:`ConfigError` with the
    constructor's own message."""
    try:
        yield
    except ValueError as error:
        if isinstance(error, UserInputError) and not _raised_in_jsonargparse(error):
            raise
        raise ConfigError(user_message(error)) from error


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Around an entry point: a :class:`UserInputError` is printed as ``error: ...`` and the process
    exits with status 2 (``SPEECHRNN_TRACEBACK=1`` keeps the traceback); anything else is a bug and
    keeps its traceback."""
    try:
        yield
    except UserInputError as error:
        if os.environ.get("SPEECHRNN_TRACEBACK"):
            raise
        print(f"error: {user_message(error)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def run_entry_point(main: Callable[[], Any]) -> NoReturn:
    """Run ``main`` and exit: its integer result is the status (0 otherwise); errors as
    :func:`reported_errors` reports them."""
    with reported_errors():
        result = main()
    sys.exit(result if isinstance(result, int) else 0)
