"""Read plain or gzipped line files incrementally, in blocks of whole lines.

A gzip stream that ends before its end-of-stream marker (a truncated download) is not an error here:
every complete line is delivered, the partial last line is held back in :attr:`LineBlocks.partial_tail`
and :attr:`LineBlocks.truncated` is set. A stream that is corrupt (bad header, CRC mismatch) raises
:class:`PrepError`.
"""

from __future__ import annotations

import os
import queue
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from dataset_prep.errors import PrepError

T = TypeVar("T")

GZIP_MAGIC = b"\x1f\x8b"
READ_SIZE = 1 << 20
DEFAULT_BLOCK = 64 << 20


@dataclass
class Block:
    """Whole lines (each ending in ``\\n``) and the 1-based file line number of the first one."""

    data: bytes
    first_line: int


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes (the name does not matter)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


class LineBlocks:
    """Iterate over a file as :class:`Block` objects of about ``block_size`` bytes.

    After iteration: ``lines`` (complete lines seen), ``truncated`` and ``partial_tail``.
    """

    def __init__(self, path: str | Path, block_size: int = DEFAULT_BLOCK, progress: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise PrepError("file not found", self.path)
        self.block_size = block_size
        self.progress = progress
        self.lines = 0
        self.truncated = False
        self.partial_tail = b""

    def __iter__(self) -> Iterator[Block]:
        pieces: list[bytes] = []
        size = 0
        with (
            open(self.path, "rb") as raw,
            tqdm(
                total=os.path.getsize(self.path), unit="B", unit_scale=True, desc=self.progress,
                disable=None if self.progress else True, leave=False,
            ) as bar,
        ):  # fmt: skip
            for data in self._decoded(raw, bar):
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

    def _block(self, data: bytes) -> Block:
        block = Block(data, self.lines + 1)
        self.lines += data.count(b"\n")
        return block

    def _decoded(self, raw, bar: tqdm) -> Iterator[bytes]:
        """Decompressed bytes (or the plain bytes) in pieces of at most ``block_size``."""
        head = raw.read(2)
        raw.seek(0)
        if head != GZIP_MAGIC:
            while chunk := raw.read(self.block_size):
                bar.update(len(chunk))
                yield chunk
            return
        decomp = zlib.decompressobj(wbits=31)
        member_has_data = False
        while chunk := raw.read(READ_SIZE):
            bar.update(len(chunk))
            while chunk:
                try:
                    out = decomp.decompress(chunk, self.block_size)
                except zlib.error as err:
                    raise PrepError(f"corrupt gzip stream ({err})", self.path) from None
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


def verify_gzip(path: str | Path) -> None:
    """Decompress the whole file, checking every member's CRC and length; raise :class:`PrepError` if bad."""
    if not is_gzip(Path(path)):
        raise PrepError("not a gzip file", path)
    blocks = LineBlocks(path, block_size=8 << 20)
    for _ in blocks:
        pass
    if blocks.truncated:
        raise PrepError("gzip stream is truncated (incomplete download?)", path)


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
