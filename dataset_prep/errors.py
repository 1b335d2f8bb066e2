"""The one error type of ``srt-prep``: unusable input, reported with file and line."""

from __future__ import annotations

from pathlib import Path


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
