"""The one error type of ``srt-prep``: unusable input, reported with file and line; and the one rule
every CLI of the project reads ``SRT_DEBUG`` by."""

from __future__ import annotations

import os
from pathlib import Path

DEBUG_ENV = "SRT_DEBUG"


def debug_requested() -> bool:
    """Whether ``SRT_DEBUG`` asks for tracebacks instead of one-line errors (set, and not ``0``)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


class PrepError(Exception):
    """Input that cannot be converted (missing file, wrong format, unknown category, ...).

    The CLI prints ``str(error)`` without a traceback and exits with status 2.
    """

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"
