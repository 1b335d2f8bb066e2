"""``srt-prep download``: fetch a category's files; resumable, skips finished files, verifies gzip.

A file is written as ``NAME.part`` and renamed to ``NAME`` only once complete (size matches the server's
length, gzip stream intact), so an existing ``NAME`` is a finished download and is skipped. An
interrupted download resumes from the ``.part`` file with an HTTP Range request.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dataset_prep.errors import PrepError
from dataset_prep.registry import Entry, file_name
from dataset_prep.streams import verify_gzip

CHUNK = 1 << 20


def download_entry(
    entry: Entry, output: Path, base_url: str | None, with_meta: bool, timeout: float
) -> list[Path]:
    """Download the entry's interaction file (and metadata) into ``output/<release>/``."""
    base = (base_url or entry.release.base_url).rstrip("/") + "/"
    relative = [entry.interactions_path] + ([entry.meta_path] if with_meta else [])
    folder = output / entry.release.name
    folder.mkdir(parents=True, exist_ok=True)
    return [fetch(base + rel, folder / file_name(rel), timeout) for rel in relative]


def fetch(url: str, dest: Path, timeout: float) -> Path:
    """Download ``url`` to ``dest`` unless it is already there; resume a previous ``.part``."""
    if dest.is_file():
        print(f"{dest}: already downloaded, skipped", file=sys.stderr)
        return dest
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing after our offset: the .part file is already complete
            return _finish(part, dest)
        raise PrepError(f"download failed: HTTP {err.code} {err.reason} for {url}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise PrepError(f"cannot reach {url} ({reason}); offline? Rerun later to resume.") from None
    with response:
        if offset and response.status == 206:
            mode = "ab"
        else:  # the server ignored the range: start again
            mode, offset = "wb", 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        try:
            with (
                open(part, mode) as out,
                tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, disable=None
                ) as bar,
            ):
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        except OSError as err:
            raise PrepError(f"download of {url} interrupted ({err}); rerun to resume", part) from None
    if total is not None and part.stat().st_size != total:
        raise PrepError(
            f"download incomplete ({part.stat().st_size} of {total} bytes); rerun to resume", part
        )
    return _finish(part, dest)


def _finish(part: Path, dest: Path) -> Path:
    """Verify a complete ``.part`` (gzip files: the whole stream) and rename it into place."""
    if dest.name.endswith(".gz"):
        try:
            verify_gzip(part)
        except PrepError as err:
            part.unlink()
            raise PrepError(
                f"downloaded file failed verification ({err.message}); deleted, rerun", dest
            ) from None
    os.replace(part, dest)
    print(f"{dest}: downloaded and verified", file=sys.stderr)
    return dest
