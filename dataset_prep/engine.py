"""The out-of-core engine of ``convert``: an in-process DuckDB database that holds the interactions.

Its tables stay in memory up to ``memory_limit`` (``--memory-limit``) and spill to a private folder under
``temp_parent`` (``--temp-dir``; by default the output's staging folder) beyond it, so the memory of a
conversion does not grow with the input: DuckDB sorts, joins and aggregates out of core. The folder is
removed when the engine closes; the engine holds a ``flock`` on the file ``lock`` in it meanwhile, so that
the next engine in the same ``temp_parent`` removes the folders of killed runs (the kernel released their
lock) and no other. DuckDB's own errors become :class:`PrepError` where the cause is the
environment (the memory limit, the temporary folder); any other is an internal error.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from dataset_prep.errors import PrepError

if TYPE_CHECKING:
    import pyarrow as pa

MEMORY_LIMIT = "1GB"
SPILL_PREFIX = ".srt-prep-engine-"
SPILL_LOCK = "lock"
_SIZE = re.compile(r"\d+(\.\d+)?\s*(B|[KMGT]i?B)", re.IGNORECASE)


def check_memory_limit(text: str) -> str:
    """``text`` when it is a size DuckDB reads (``4GB``, ``512MB``, ``1.5GiB``); else :class:`PrepError`."""
    if not _SIZE.fullmatch(text.strip()):
        raise PrepError(f"--memory-limit {text!r} is not a size such as 4GB, 512MB or 1.5GiB")
    return text.strip()


class Engine:
    """A DuckDB connection with a memory limit (checked by :func:`check_memory_limit`) and its own spill
    folder (a context manager)."""

    def __init__(self, memory_limit: str, temp_parent: Path) -> None:
        import duckdb  # here, so that the CLI starts without it

        self.memory_limit = memory_limit
        self.temp_parent = temp_parent
        remove_dead_spill(temp_parent)
        try:
            self._folder = tempfile.TemporaryDirectory(prefix=SPILL_PREFIX, dir=temp_parent)
            self.folder = Path(self._folder.name)
            self._lock = os.open(self.folder / SPILL_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise PrepError(
                f"cannot create the engine's temporary folder ({err.strerror})", temp_parent
            ) from None
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # a new file in a new folder: nobody else can hold it
        config = {
            "memory_limit": self.memory_limit,
            "temp_directory": str(self.folder),
            # Every order that matters is an explicit ORDER BY; not keeping insertion order saves memory.
            "preserve_insertion_order": False,
        }
        try:
            self.con = duckdb.connect(":memory:", config=config)
        except duckdb.Error as err:
            self._close_folder()
            raise PrepError(f"--memory-limit {memory_limit!r}: {_first_line(err)}") from None
        self._background = ThreadPoolExecutor(1, thread_name_prefix="engine")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._background.shutdown(wait=True)
        self.con.close()
        self._close_folder()

    def _close_folder(self) -> None:
        """Remove the spill folder, then release its lock."""
        self._folder.cleanup()
        os.close(self._lock)

    def run(self, sql: str, params: Sequence[object] = ()) -> None:
        """Execute one or more statements (no result)."""
        with self._translated():
            self.con.execute(sql, list(params) or None)

    def start(self, statements: Sequence[tuple[str, Sequence[object]]]) -> Future[None]:
        """Execute ``(sql, parameters)`` statements in order, in the background, on a cursor of their own
        (DuckDB releases the GIL while it works); ``result()`` of the future waits for them and raises what
        they raised."""

        def work() -> None:
            cursor = self.con.cursor()
            try:
                with self._translated():
                    for sql, params in statements:
                        cursor.execute(sql, list(params) or None)
            finally:
                cursor.close()

        return self._background.submit(work)

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """All rows of a query."""
        with self._translated():
            return self.con.execute(sql, list(params) or None).fetchall()

    def one(self, sql: str, params: Sequence[object] = ()) -> tuple:
        """The single row of a query."""
        (row,) = self.rows(sql, params)
        return row

    def append(self, table: str, data: pa.Table) -> None:
        """Append an arrow table to ``table`` (same columns, same order)."""
        with self._translated():
            self.con.from_arrow(data).insert_into(table)

    def batches(self, sql: str, size: int, params: Sequence[object] = ()) -> Iterator[pa.RecordBatch]:
        """A query's rows as arrow record batches of ``size`` rows (the last may be shorter)."""
        cursor = self.con.cursor()  # its own stream: several can be read side by side
        try:
            with self._translated():
                reader = cursor.sql(sql, params=list(params) or None).to_arrow_reader(size)
            while True:
                with self._translated():
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        return
                yield batch
        finally:
            cursor.close()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        import duckdb

        try:
            yield
        except duckdb.OutOfMemoryException as err:
            raise PrepError(
                f"the conversion needs more memory than --memory-limit {self.memory_limit} gives the engine, "
                f"even spilling to {self.temp_parent}: raise the limit ({_first_line(err)})"
            ) from None
        except duckdb.IOException as err:
            raise PrepError(
                f"the engine's temporary folder {self.folder} failed ({_first_line(err)}); free space there "
                "or choose another --temp-dir"
            ) from None
        except (duckdb.InterruptException, RuntimeError) as err:  # Ctrl-C inside a query: DuckDB's words
            if isinstance(err, RuntimeError) and str(err) != "Query interrupted":
                raise
            raise KeyboardInterrupt from None


def remove_dead_spill(parent: Path) -> None:
    """Remove the spill folders in ``parent`` that engines killed before they could (``kill -9``, a crash):
    those whose lock file nobody holds. A folder without a lock file (another program's, or an engine's in
    the instant before it locks) is left alone, and so is one whose lock is held (a live engine's)."""
    for folder in parent.glob(SPILL_PREFIX + "*"):
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            fd = os.open(folder / SPILL_LOCK, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # held: a live engine's
            pass
        finally:
            os.close(fd)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
