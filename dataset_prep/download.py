"""``srt-prep download``: fetch a category's files; resumable, verified, recorded.

A file is written as ``NAME.part`` and renamed to ``NAME`` only once verified:

- length: the body must be as long as the server said (Content-Length, or the total of Content-Range on
  a resume); a body that ends early (also a chunked one) is an error and the ``.part`` is kept to resume;
- resume: a ``.part`` is continued only when the server answers 206 with a Content-Range that starts at
  the ``.part``'s size; a 200 (range ignored) or a 206 from byte 0 rewrites it from the start, a 206 at
  another offset is discarded and fetched again without a range; a 416 whose Content-Range total equals
  the ``.part``'s size means the ``.part`` is complete, any other 416 (a ``.part`` larger than the file)
  discards the ``.part`` and starts again;
- format: a gzip file must be one complete gzip stream (every member's CRC and length); no file may be an
  HTML page; its first lines must parse as the release's layout; a plain file must end with a newline
  (the one check left when the server announces no length); all of it read by the bounded reader of
  :mod:`dataset_prep.streams` (a gzip bomb fails verification at once);
- stalls: one :class:`Deadline` per file, on throughput: an answer must be complete within ``--timeout``
  seconds and each window of ``--timeout`` seconds of body must bring :data:`STALL_RATE` bytes a second,
  or the connection is cut (a ``.part`` is kept to resume). A per-read timeout alone never ends a server
  that trickles a byte a second.

``OUTPUT/<release>/downloads.json`` records url, size, sha256 and whether the length was checked against
the server's, for every finished file. A file recorded with its size is skipped; any other existing file
is fetched again.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from tqdm import tqdm

from dataset_prep.atomic import sha256_of, write_json
from dataset_prep.errors import PrepError
from dataset_prep.formats import CsvLayout, JsonLayout, MetaLayout
from dataset_prep.readers import check_first_lines
from dataset_prep.registry import Entry
from dataset_prep.streams import is_gzip, verify_gzip

CHUNK = 1 << 20
LOG = "downloads.json"
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")
NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)
STALL_RATE = 1 << 10  # bytes a second: a download slower than this over a window of --timeout s has stalled
_HANDLERS = (urllib.request.HTTPHandler, urllib.request.HTTPSHandler)
_LOOP = urllib.request.HTTPRedirectHandler.inf_msg  # how urllib's "too many redirects" error starts


def download_entry(
    entry: Entry, output: Path, base_url: str | None, with_meta: bool, timeout: float
) -> list[Path]:
    """Download the entry's interaction file (and metadata) into ``output/<release>/``."""
    base = (base_url or entry.release.base_url).rstrip("/") + "/"
    if not base.startswith(("https://", "http://")):
        raise PrepError(f"--base-url {base_url!r} is not an http:// or https:// URL")
    wanted = [(entry.interactions_path, entry.interactions_file, entry.layout)]
    if with_meta:
        wanted.append((entry.meta_path, entry.meta_file, entry.release.meta_layout))
    folder = output / entry.release.name
    folder.mkdir(parents=True, exist_ok=True)
    log = DownloadLog(folder / LOG)
    return [
        fetch(base + rel, folder / name, timeout, lambda p, lay=layout: verify(p, lay), log)
        for rel, name, layout in wanted
    ]


class DownloadLog:
    """``downloads.json``: every finished, verified file of a folder (rewritten atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.files: dict[str, dict] = dict(json.loads(path.read_text(encoding="utf-8"))["files"])
        except (OSError, ValueError, KeyError, TypeError):
            self.files = {}

    def done(self, dest: Path) -> bool:
        """True when ``dest`` is recorded and still has its recorded size."""
        record = self.files.get(dest.name)
        return bool(record) and dest.is_file() and dest.stat().st_size == record.get("size")

    def add(self, dest: Path, url: str, length_checked: bool) -> dict:
        """Record ``dest`` (size and sha256 measured now); the record."""
        record = {
            "url": url,
            "size": dest.stat().st_size,
            "sha256": sha256_of(dest),
            "length_checked": length_checked,
            "downloaded": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.files[dest.name] = record
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        write_json(tmp, {"files": self.files})
        os.replace(tmp, self.path)
        return record


def fetch(url: str, dest: Path, timeout: float, check: Callable[[Path], None], log: DownloadLog) -> Path:
    """Download ``url`` to ``dest`` unless ``log`` has it; resume a previous ``.part``; verify; record."""
    if log.done(dest):
        print(f"{dest}: already downloaded and verified, skipped", file=sys.stderr)
        return dest
    part = dest.with_name(dest.name + ".part")
    with Deadline(timeout) as deadline:
        length_checked = _download(url, part, deadline)
    return _finish(part, dest, url, length_checked, check, log)


def _download(url: str, part: Path, deadline: Deadline) -> bool:
    """Bring ``part`` to the whole file (resuming it); whether its length was checked against the server's."""
    offset = part.stat().st_size if part.is_file() else 0
    opener = urllib.request.build_opener(*(_watched(kind, deadline) for kind in _HANDLERS))
    while True:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = opener.open(urllib.request.Request(url, headers=headers), timeout=deadline.window)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:
                total = _content_range(err.headers)[2]
                if total == offset:  # nothing after our offset: the .part is complete
                    return True
                size = "of unknown size" if total is None else f"{total} bytes"
                offset = _restart(part, f"is {offset} bytes, the file on the server {size}; starting again")
                continue
            if str(err.reason).startswith(_LOOP):  # urllib's three lines
                raise PrepError(
                    f"download failed: too many redirects (a redirect loop?) for {url}; the last answer was "
                    f"HTTP {err.code} {str(err.reason).removeprefix(_LOOP)}"
                ) from None
            raise PrepError(f"download failed: HTTP {err.code} {err.reason} for {url}") from None
        except (*NETWORK_ERRORS, ValueError) as err:  # ValueError: a URL urllib cannot parse (bad port)
            deadline.check(url)
            reason = getattr(err, "reason", err)
            raise PrepError(f"cannot reach {url} ({reason}); offline? Rerun later to resume.") from None
        with response:
            start, total = _body_range(response, url)
            if start not in (0, offset):  # some other range: useless, ask for the whole file (once)
                if not offset:
                    raise PrepError(
                        f"download failed: the server sent a partial body without a range for {url}"
                    )
                offset = _restart(part, f"the server sent bytes from {start}, not {offset}; starting again")
                continue
            if offset and start == 0:
                _restart(part, "the server did not resume (it sent the file from its start); starting again")
            _receive(response, part, start, total, url, deadline)
        return total is not None


class Deadline:
    """The one deadline of a download, on its throughput: each window of ``window`` seconds (``--timeout``)
    must bring at least :data:`STALL_RATE` bytes a second of body, and an answer's status and headers must
    come within one window. A watcher thread shuts the connection's socket down when a window falls short,
    which ends the read that waits on it, however slowly bytes trickle in; :meth:`check` then raises. (Each
    socket operation also has ``window`` as its own timeout.) A context manager: the watcher runs inside."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.stalled: str | None = None  # what fell short, once it did
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="srt-prep-deadline", daemon=True)
        self._socket: socket.socket | None = None
        self._restart("answer")

    def __enter__(self) -> Deadline:
        self._watcher.start()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._done.set()
        self._watcher.join()

    def connected(self, sock: socket.socket) -> None:
        """A new connection: watch ``sock``; its answer is due within a window."""
        with self._lock:
            self._socket = sock
            self._restart("answer")

    def body(self) -> None:
        """The body starts: from now on each window must bring its bytes."""
        with self._lock:
            self._restart("body")

    def received(self, size: int) -> None:
        """``size`` more bytes of body arrived."""
        with self._lock:
            self._bytes += size

    def check(self, url: str, part: Path | None = None) -> None:
        """Raise the stall as a :class:`PrepError` if the watcher saw one (``part``: the body kept)."""
        window = f"{self.window:g} s (--timeout {self.window:g})"
        if self.stalled == "answer":
            raise PrepError(f"download of {url} stalled: no complete answer within {window}; rerun to resume")
        if self.stalled == "body":
            raise PrepError(
                f"download of {url} stalled: less than {STALL_RATE >> 10} KiB/s over the last {window}; kept "
                f"{part.stat().st_size} bytes, rerun to resume",
                part,
            )

    def _restart(self, phase: str) -> None:
        """Begin a window (the lock is held, or the watcher not started)."""
        self._phase, self._bytes, self._since = phase, 0, time.monotonic()

    def _watch(self) -> None:
        while True:
            with self._lock:
                left = self._since + self.window - time.monotonic()
                if left <= 0 and self._socket is None:  # not connected yet: the connect has its own timeout
                    self._restart("answer")
                    left = self.window
                elif left <= 0:
                    if self._phase == "answer" or self._bytes < STALL_RATE * self.window:
                        self.stalled = self._phase
                        if self._socket is not None:
                            with contextlib.suppress(OSError):
                                self._socket.shutdown(socket.SHUT_RDWR)
                        return
                    self._restart("body")
                    left = self.window
            if self._done.wait(left):
                return


def _watched(
    kind: type[urllib.request.AbstractHTTPHandler], deadline: Deadline
) -> urllib.request.AbstractHTTPHandler:
    """A ``kind`` handler (http or https) whose connections report their socket to ``deadline``."""

    class Watched(kind):
        def do_open(
            self, http_class: type[http.client.HTTPConnection], req: urllib.request.Request, **kw: object
        ) -> http.client.HTTPResponse:
            class Connection(http_class):
                def connect(self) -> None:
                    super().connect()
                    deadline.connected(self.sock)

            return super().do_open(Connection, req, **kw)

    return Watched()


def _restart(part: Path, message: str) -> int:
    """Warn that ``part`` is dropped, delete it; the offset to fetch from now (0)."""
    print(f"srt-prep: warning: {part}: {message}", file=sys.stderr)
    part.unlink(missing_ok=True)
    return 0


def _content_range(headers: Message | None) -> tuple[int | None, int | None, int | None]:
    """(first byte, last byte, total) of a Content-Range header (``bytes */N`` on a 416); None if absent."""
    found = _CONTENT_RANGE.fullmatch((headers or {}).get("Content-Range", "").strip())
    groups = found.groups() if found else (None, None, None)
    return tuple(None if g in (None, "*") else int(g) for g in groups)


def _body_range(response: http.client.HTTPResponse, url: str) -> tuple[int | None, int | None]:
    """Where the body starts in the file and the file's total length (None if not announced)."""
    length = response.headers.get("Content-Length")
    length = int(length) if length is not None and length.strip().isdigit() else None
    if response.status == 200:
        return 0, length
    if response.status != 206:
        raise PrepError(f"download failed: unexpected HTTP {response.status} {response.reason} for {url}")
    start, end, total = _content_range(response.headers)
    if start is None:
        return None, None  # a 206 without a usable Content-Range: start again without a range
    if length is not None and length != end - start + 1:
        raise PrepError(
            f"download failed: the server's Content-Range ({start}-{end}) and Content-Length ({length}) "
            f"disagree for {url}"
        )
    return start, total


def _receive(
    response: http.client.HTTPResponse,
    part: Path,
    start: int,
    total: int | None,
    url: str,
    deadline: Deadline,
) -> None:
    """Write the body to ``part`` (appended at ``start`` > 0); raise if it stalls or ends before ``total``."""
    deadline.body()
    try:
        with (
            open(part, "ab" if start else "wb") as out,
            tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=part.stem, disable=None) as bar,
        ):
            while chunk := _read(response, out):
                out.write(chunk)
                bar.update(len(chunk))
                deadline.received(len(chunk))
    except NETWORK_ERRORS as err:
        deadline.check(url, part)
        if isinstance(err, http.client.IncompleteRead):  # its count is that of the last read only
            why = "the connection closed before the end of the body"
        else:
            text, name = str(err), type(err).__name__
            why = text if text.startswith(name) else f"{name}: {text}"
        raise PrepError(
            f"download of {url} interrupted after {part.stat().st_size} bytes ({why}); rerun to resume", part
        ) from None
    size = part.stat().st_size
    if total is None or size != total:  # the body ended: on its own, or stalled and cut by the deadline
        deadline.check(url, part)
    if total is not None and size != total:
        raise PrepError(f"download of {url} incomplete ({size} of {total} bytes); rerun to resume", part)


def _read(response: http.client.HTTPResponse, out: BinaryIO) -> bytes:
    """The next bytes of the body, as soon as any arrive; the bytes a cut chunked body delivered are written
    before raising."""
    try:
        return response.read1(CHUNK)
    except http.client.IncompleteRead as err:
        out.write(err.partial)
        raise


def _finish(
    part: Path, dest: Path, url: str, length_checked: bool, check: Callable[[Path], None], log: DownloadLog
) -> Path:
    """Verify a complete ``.part``, rename it into place and record it."""
    try:
        check(part)
    except PrepError as err:
        part.unlink()
        detail = err.message if err.line is None else f"line {err.line}: {err.message}"
        raise PrepError(f"downloaded file failed verification ({detail}); deleted, rerun", dest) from None
    os.replace(part, dest)
    record = log.add(dest, url, length_checked)
    how = "length and format" if length_checked else "format only: the server announced no length"
    print(f"{dest}: downloaded and verified ({how}; sha256 {record['sha256'][:16]}...)", file=sys.stderr)
    return dest


def verify(path: Path, layout: CsvLayout | JsonLayout | MetaLayout) -> None:
    """Raise :class:`PrepError` unless ``path`` looks like a complete file of ``layout``."""
    with open(path, "rb") as f:
        head = f.read(256)
    if not head:
        raise PrepError("is empty", path)
    if path.name.removesuffix(".part").endswith(".gz") and not is_gzip(path):
        kind = "an HTML page" if head.lstrip().startswith(b"<") else "something else"
        raise PrepError(f"not a gzip file but {kind} (starts {head[:40]!r})", path)
    if is_gzip(path):
        verify_gzip(path)
    else:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)  # not empty: checked above
            if f.read(1) != b"\n":
                raise PrepError("ends in the middle of a line (cut short?)", path)
    check_first_lines(path, layout)
