"""Read plain or gzipped line files incrementally, in blocks of whole lines, within bounds.

Every file ``srt-prep`` reads goes through :class:`LineBlocks` (:func:`text_lines` for the small text files):
the interaction files and the metadata, the ``--exclude-users-of`` and ``--spec`` files, the UniSRec files and
the downloads it verifies. So every one of them gets the same bounds, each a :class:`PrepError` naming the
file (and the line where there is one) when crossed, and the same memory: a reader holds at most about twice
its block (16 MiB) plus one line (:data:`MAX_LINE`), whatever the file holds:

- a line (one record) is at most :data:`MAX_LINE` bytes;
- at most :data:`MAX_EMPTY_LINES` empty lines (nothing, or only ``\\r``, before the ``\\n``) in a row;
- a gzip stream unpacks to at most :data:`MAX_RATIO` times its size, in every window of :data:`RATIO_WINDOW`
  packed bytes: a bomb stops after a few MiB, not after its GiBs;
- the path must be a regular file (a FIFO would block, a device never end);
- the text must be UTF-8 (a BOM is dropped): data of another compression (bzip2, xz, zstd, zip; a gzip inside
  the gzip) or UTF-16 text is refused with its name instead of being read as garbage lines.

Lines are split in bytes (:meth:`Block.lines`), so U+2028 or U+0085 inside a record splits nothing.

A gzip stream that ends before its end-of-stream marker (a truncated download) is not an error here:
every complete line is delivered, the partial last line is held back in :attr:`LineBlocks.partial_tail`
and :attr:`LineBlocks.truncated` is set. A stream that is corrupt (bad header, CRC mismatch) raises
:class:`PrepError`.
"""

from __future__ import annotations

import os
import queue
import re
import stat
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from tqdm import tqdm

from dataset_prep.errors import PrepError

T = TypeVar("T")

GZIP_MAGIC = b"\x1f\x8b"
READ_SIZE = 1 << 20
# A block's lines become Python objects (about 40 bytes each, whatever their length) when it is parsed line
# by line: 16 MiB of the shortest lines is about 0.3 GB.
DEFAULT_BLOCK = 16 << 20
# The longest line (one record) read. The longest line of the real files measured (tests/data and the shared
# data: 2014 and 2018 metadata and reviews, 2018 ratings) is 14.5 kB; 16 MiB is a thousand times that.
MAX_LINE = 16 << 20
# Empty lines in a row: the real files have none but a last empty line; a newline bomb has billions.
MAX_EMPTY_LINES = 1000
# Bytes unpacked per packed byte, over each window of RATIO_WINDOW packed bytes (the last, shorter window
# gets a whole window's allowance). The real files measured unpack to 2.7 to 4.9 times their size over the
# whole file and to at most 7 times over any 64 KiB; gzip itself reaches about 1030 on runs of one byte.
MAX_RATIO = 100
RATIO_WINDOW = 64 << 10
BOM = b"\xef\xbb\xbf"
# How other compressions and encodings start: they would read as lines of garbage.
_FOREIGN = [
    (re.compile(rb"\x1f\x8b\x08"), "gzip data"),
    (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2 data"),
    (re.compile(rb"\xfd7zXZ\x00"), "xz data"),
    (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd data"),
    (re.compile(rb"PK\x03\x04"), "zip data"),
    (re.compile(rb"\xff\xfe|\xfe\xff"), "UTF-16 text"),
]
_KINDS = [
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
]


@dataclass
class Block:
    """Whole lines (each ending in ``\\n``) and the 1-based file line number of the first one."""

    data: bytes
    first_line: int

    def lines(self) -> list[bytes]:
        """The lines without their line ends (``\\n``, ``\\r\\n`` or a lone ``\\r``, as pyarrow's CSV parser
        ends a row; U+2028 and the like are no line ends in bytes)."""
        return self.data.splitlines()


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes (the name does not matter)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading; :class:`PrepError` unless it is a regular file (checked on the open file,
    which a FIFO does not block)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PrepError("file not found", path) from None
    except OSError as err:
        raise PrepError(f"cannot read ({err.strerror})", path) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise PrepError("is a folder, not a file", path)
        kind = next((name for test, name in _KINDS if test(mode)), "something else")
        raise PrepError(f"not a regular file but {kind}; srt-prep reads files", path)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


class LineBlocks:
    """Iterate over a file as :class:`Block` objects of about ``block_size`` bytes, within the bounds above.

    After iteration: ``lines`` (complete lines seen), ``truncated`` and ``partial_tail``.
    """

    def __init__(self, path: str | Path, block_size: int = DEFAULT_BLOCK, progress: str | None = None):
        self.path = Path(path)
        open_regular(self.path).close()  # a missing or odd file fails here, before any work
        self.block_size = block_size
        self.progress = progress
        self.lines = 0
        self.truncated = False
        self.partial_tail = b""
        self._gzip = False
        self._line_ends = 0  # "\n" decoded so far
        self._open_line = 0  # bytes decoded since the last "\n"
        self._trailing = 1  # "\n" at the end of what was decoded, "\r" removed (the start counts as one)

    def __iter__(self) -> Iterator[Block]:
        pieces: list[bytes] = []
        size = 0
        opening = True
        with (
            open_regular(self.path) as raw,
            tqdm(
                total=os.fstat(raw.fileno()).st_size, unit="B", unit_scale=True, desc=self.progress,
                disable=None if self.progress else True, leave=False,
            ) as bar,
        ):  # fmt: skip
            for data in self._decoded(raw, bar):
                if opening:
                    data, opening = self._opening(data), False
                self._check(data)
                pieces.append(data)
                size += len(data)
                if size >= self.block_size:
                    joined = b"".join(pieces)
                    cut = joined.rfind(b"\n") + 1
                    pieces, size = [joined[cut:]], len(joined) - cut
                    if cut:
                        yield self._block(joined[:cut])
        rest = b"".join(pieces)
        cut = rest.rfind(b"\n") + 1
        if cut:
            yield self._block(rest[:cut])
        tail = rest[cut:]
        if self.truncated:
            self.partial_tail = tail
        elif tail.strip():
            yield self._block(tail + b"\n")

    def check_complete(self) -> None:
        """After iteration: :class:`PrepError` when the gzip stream was truncated."""
        if self.truncated:
            raise PrepError("gzip stream is truncated (incomplete download?)", self.path)

    def _block(self, data: bytes) -> Block:
        block = Block(data, self.lines + 1)
        self.lines += data.count(b"\n")
        return block

    def _opening(self, data: bytes) -> bytes:
        """The first decoded bytes, without a UTF-8 BOM; :class:`PrepError` for data that is no UTF-8 text."""
        for magic, what in _FOREIGN:
            if magic.match(data):
                where = " inside gzip" if self._gzip else ""
                twice = " (compressed twice?)" if self._gzip and what == "gzip data" else ""
                raise PrepError(
                    f"is {what}{where}{twice}; srt-prep reads UTF-8 text, plain or gzipped: unpack or "
                    "re-encode it first",
                    self.path,
                )
        return data.removeprefix(BOM)

    def _check(self, data: bytes) -> None:
        """Hold the next decoded bytes to :data:`MAX_LINE` and :data:`MAX_EMPTY_LINES`."""
        end = data.find(b"\n")
        running = self._open_line + (len(data) if end < 0 else end)  # the line that goes on from before
        if running > MAX_LINE:
            raise PrepError(
                f"a line longer than {MAX_LINE >> 20} MiB, the most srt-prep reads as one record: not a "
                "data file",
                self.path,
                self._line_ends + 1,
            )
        self._open_line = running if end < 0 else len(data) - data.rfind(b"\n") - 1
        # Without any "\r" (one split from its "\n" between two pieces too) empty lines are runs of "\n".
        text = data.replace(b"\r", b"") if b"\r" in data else data
        before = min(self._trailing, MAX_EMPTY_LINES + 2)
        seen = b"\n" * before + text
        at = seen.find(b"\n" * (MAX_EMPTY_LINES + 2))
        if at >= 0:
            first_empty = self._line_ends - before + seen.count(b"\n", 0, at) + 2
            raise PrepError(
                f"more than {MAX_EMPTY_LINES:,} empty lines in a row: not a data file", self.path, first_empty
            )
        content = text.rstrip(b"\n")
        self._trailing = self._trailing + len(text) if not content else len(text) - len(content)
        self._line_ends += data.count(b"\n")

    def _decoded(self, raw: BinaryIO, bar: tqdm) -> Iterator[bytes]:
        """Decompressed bytes (or the plain bytes) in pieces of at most ``block_size`` (and 1 MiB)."""
        piece = min(READ_SIZE, self.block_size)
        self._gzip = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        if not self._gzip:
            while chunk := raw.read(piece):
                bar.update(len(chunk))
                yield chunk
            return
        decomp = zlib.decompressobj(wbits=31)
        member_has_data = False
        while chunk := raw.read(RATIO_WINDOW):
            bar.update(len(chunk))
            unpacked = 0
            while chunk:
                try:
                    out = decomp.decompress(chunk, piece)
                except zlib.error as err:
                    raise PrepError(f"corrupt gzip stream ({err})", self.path) from None
                unpacked += len(out)
                if unpacked > MAX_RATIO * RATIO_WINDOW:
                    raise PrepError(
                        f"unpacks to more than {MAX_RATIO} times its size (a gzip bomb?); real Amazon files "
                        "unpack to less than 10 times theirs",
                        self.path,
                    )
                member_has_data = True
                if out:
                    yield out
                if decomp.eof:  # end of a gzip member; another may follow
                    chunk = decomp.unused_data.lstrip(b"\0")
                    decomp = zlib.decompressobj(wbits=31)
                    member_has_data = False
                else:
                    chunk = decomp.unconsumed_tail
        if member_has_data:
            if out := decomp.flush():
                yield out
            self.truncated = True


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Each line of the UTF-8 text file at ``path`` (plain or gzipped, read by :class:`LineBlocks`) with its
    number, without its line end; a line that is not UTF-8, or a truncated gzip stream, is a
    :class:`PrepError` naming it."""
    blocks = LineBlocks(path, block_size=READ_SIZE)
    for block in blocks:
        for number, raw in enumerate(block.lines(), start=block.first_line):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise PrepError(f"not UTF-8 text ({err.reason})", path, number) from None
    blocks.check_complete()


def verify_gzip(path: str | Path) -> None:
    """Decompress the whole file, checking every member's CRC and length; raise :class:`PrepError` if bad."""
    if not is_gzip(Path(path)):
        raise PrepError("not a gzip file", path)
    blocks = LineBlocks(path, block_size=8 << 20)
    for _ in blocks:
        pass
    blocks.check_complete()


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Produce ``items`` in a background thread, up to ``depth`` ahead: parsing (pyarrow, zlib; both
    release the GIL) overlaps the consumer's work. An exception in the producer is re-raised here."""
    slots: queue.Queue = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put((item, None))
            slots.put((done, None))
        except BaseException as err:  # handed to the consumer
            slots.put((done, err))

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item, err = slots.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(0.01)
