"""Replacing a file atomically: readers see the old file or the complete new one, never a part."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A new sibling file of ``path`` to write in the block; renamed over ``path`` when the block
    succeeds, removed when it fails.

    The file is created as ``open()`` would create it, with the user's umask (``tempfile.mkstemp``
    would make it ``0600``); the folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
