"""The interactions inside the engine, and the dense codes of their users and items.

Table ``raw`` holds every row read, appended in input order with its position ``r`` (0, 1, ... across all
files): user and item ids as strings, the rating (float32) and the time in seconds (float64).
:meth:`Interactions.intern` then gives every distinct user and every distinct item a dense int32 code in
order of first appearance (tables ``users`` and ``items``: token, code, and whether the token can be a
RecBole token), so that sorting rows by user code groups users in the order they first appear.

Python holds one batch of rows at a time, plus what :meth:`Interactions.item_tokens` and
:meth:`Interactions.item_hashes` return (per distinct item: its id, or an 8-byte hash).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataset_prep.engine import Engine
from dataset_prep.readers import Chunk
from dataset_prep.text import TOKEN_BREAKERS

# TOKEN_BREAKERS as an RE2 character class (DuckDB's regular expressions), each character escaped.
_BREAKER_CLASS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in TOKEN_BREAKERS) + "]"
BATCH = 1 << 16  # rows per batch exchanged with the engine, outside the bulk of the rows


class Interactions:
    """Rows appended in input order to the engine's ``raw`` table; then interned."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rows = 0
        engine.run("CREATE TABLE raw (r BIGINT, user VARCHAR, item VARCHAR, rating FLOAT, ts DOUBLE)")

    def add(self, chunk: Chunk, item_prefix: str = "") -> None:
        """Append a parsed chunk (timestamps already in seconds); items get ``item_prefix``."""
        n = len(chunk.rating)
        items = chunk.items
        if item_prefix:
            items = pc.binary_join_element_wise(pa.scalar(item_prefix), items, "")
        columns = {"r": np.arange(self.rows, self.rows + n), "user": chunk.users, "item": items}
        self.engine.append("raw", pa.table({**columns, "rating": chunk.rating, "ts": chunk.ts}))
        self.rows += n

    def intern(self) -> None:
        """Tables ``users`` and ``items``: each distinct id, its code (order of first appearance) and ``ok``
        (it can be a RecBole token: not empty, no whitespace, control character or '"')."""
        for table, column in (("users", "user"), ("items", "item")):
            self.engine.run(
                f"CREATE TABLE {table} AS SELECT {column} AS token, "
                "(row_number() OVER (ORDER BY min(r)) - 1)::INTEGER AS code, "
                f"{column} <> '' AND NOT regexp_matches({column}, '{_BREAKER_CLASS}') AS ok "
                f"FROM raw GROUP BY {column}"
            )

    def item_tokens(self) -> pa.Array:
        """Every item id, indexed by code."""
        batches = list(self.engine.batches("SELECT token FROM items ORDER BY code", BATCH))
        return pa.concat_arrays([b.column(0) for b in batches]) if batches else pa.array([], pa.string())

    def item_hashes(self) -> np.ndarray:
        """The sorted Python ``hash`` of every item id (a compact membership test for metadata keys)."""
        parts = [
            np.fromiter(map(hash, batch.column(0).to_pylist()), np.int64, batch.num_rows)
            for batch in self.engine.batches("SELECT token FROM items", BATCH)
        ]
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)


class AscendingLookup:
    """Tokens of non-decreasing codes, read from a query's ``(code, token)`` batches sorted by code: a merge,
    so only about one batch of tokens is held."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._batches = batches
        self._codes = np.empty(0, np.int32)
        self._tokens: pa.Array = pa.array([], pa.string())

    def take(self, codes: np.ndarray) -> pa.Array:
        """The tokens of ``codes`` (sorted, and never below the codes of an earlier call)."""
        if not len(codes):
            return pa.array([], pa.string())
        while not len(self._codes) or self._codes[-1] < codes[-1]:
            batch = next(self._batches)
            self._codes = np.concatenate([self._codes, batch.column(0).to_numpy()])
            self._tokens = pa.concat_arrays([self._tokens, batch.column(1)])
        tokens = self._tokens.take(pa.array(np.searchsorted(self._codes, codes)))
        rest = int(np.searchsorted(self._codes, codes[-1]))
        self._codes, self._tokens = self._codes[rest:], self._tokens.slice(rest)
        return tokens
