"""A content-keyed store of text vectors: a text is encoded once, ever, per encoder setting.

Every dataset, cold-start copy, pre-training mix, fine-tuning target and serving catalog that
uses the same encoder setting reads the same store, keyed by the text itself (BLAKE2b-128 of its
UTF-8 bytes), so only texts never seen before are encoded.

Layout of one setting's folder (:attr:`ItemEncoder.setting` names it)::

    <folder>/<shard>.keys.npy      S16 [n]     digests of the shard's texts
    <folder>/<shard>.vectors.npy   float32 [n, F]
    <folder>/<shard>.json          shape, dtype and SHA-256 of both files, the vectors' size and mtime

A shard is written once (atomically, the index last: a shard without its index does not exist)
and never changed; each new batch of texts adds one, in the order asked. Reading memory-maps the
vectors: opening a store of a million items reads only its keys, and asking again for the texts of
one shard in its order returns the mapped rows themselves, copying nothing. A shard whose vectors'
size or modification time differs from its index is checked in full (shape, dtype, SHA-256); a
damaged one is dropped with one warning, and its texts are encoded again when they are asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from recbole_srt.files import replacing

logger = logging.getLogger(__name__)

DIGEST = np.dtype("S16")
# The key of the all-zero row a RecBole feature matrix starts with (internal id 0, padding). No text
# hashes to it (BLAKE2b-128 would have to return 16 zero bytes), and it is never encoded.
PADDING = b"\0" * 16


class StoreError(ValueError):
    """The store cannot be written."""


def digests(texts: Sequence[str]) -> np.ndarray:
    """``S16 [len(texts)]``: BLAKE2b-128 of each text's UTF-8 bytes."""
    blake2b = hashlib.blake2b
    return np.array([blake2b(t.encode(), digest_size=16).digest() for t in texts], dtype=DIGEST)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class VectorStore:
    """The vectors of one encoder setting in ``folder``; see the module docstring.

    ::

        store = VectorStore(folder)
        matrix = store.vectors(texts, encode)   # float32 [len(texts), F]; encode(new_texts) for the rest
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        # _shards: the memory-mapped vectors; _index: digest -> row of _where, the [n, 2] shard and row
        # of each stored text
        self._shards: list[np.ndarray] = []
        self._index: dict[bytes, int] = {}
        self._where = np.empty((0, 2), dtype=np.int64)
        for index_file in sorted(self.folder.glob("*.json")):
            shard = self._open_shard(index_file)
            if shard is not None:
                self._append(*shard)

    def __len__(self) -> int:
        return len(self._index)

    def _open_shard(self, index_file: Path) -> tuple[np.ndarray, np.ndarray] | None:
        """``(keys, vectors)`` of one shard, or ``None`` (with a warning) when it is damaged."""
        stem = index_file.name.removesuffix(".json")
        keys_file, vectors_file = (index_file.with_name(f"{stem}.{part}.npy") for part in ("keys", "vectors"))
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
            if not isinstance(index, dict):
                raise ValueError(f"a JSON {type(index).__name__}, not an object")
            keys = np.load(keys_file, allow_pickle=False)
            vectors = np.load(vectors_file, mmap_mode="c", allow_pickle=False)
            found = vectors_file.stat()
        except (OSError, ValueError, EOFError) as error:
            logger.warning(
                "item feature store %s: shard %s unreadable (%s); re-encoding", self.folder, stem, error
            )
            with contextlib.suppress(OSError):
                index_file.unlink(missing_ok=True)  # the shard no longer exists; its files are rewritten
            return None
        recorded = (index.get("shape"), index.get("dtype"), index.get("keys_sha256"))
        stat = [found.st_size, found.st_mtime_ns]
        problem = None
        if list(vectors.shape) != recorded[0] or keys.dtype != DIGEST or len(keys) != vectors.shape[0]:
            problem = f"shape {list(vectors.shape)}, {len(keys)} keys; its index records {recorded[0]}"
        elif str(vectors.dtype) != recorded[1]:
            problem = f"dtype {vectors.dtype}, its index records {recorded[1]}"
        elif stat != index.get("vectors_stat"):  # touched since it was written: check every byte
            if _sha256(vectors_file) != index.get("vectors_sha256") or _sha256(keys_file) != recorded[2]:
                problem = "its content differs from the SHA-256 its index records"
            else:
                with contextlib.suppress(OSError):  # a read-only store is checked in full each time
                    self._write_index(index_file, {**index, "vectors_stat": stat})
        if problem:
            logger.warning("item feature store %s: shard %s: %s; re-encoding", self.folder, stem, problem)
            with contextlib.suppress(OSError):
                for path in (index_file, keys_file, vectors_file):
                    path.unlink(missing_ok=True)
            return None
        return keys, vectors

    def _append(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Make one opened shard's ``keys`` and (memory-mapped) ``vectors`` findable."""
        rows = np.arange(len(keys), dtype=np.int64)
        start = len(self._where)
        self._where = np.concatenate(
            [self._where, np.stack([np.full_like(rows, len(self._shards)), rows], 1)]
        )
        self._index.update({key: start + i for i, key in enumerate(keys.tolist())})
        self._shards.append(vectors)

    def _dim(self) -> int:
        if not self._shards:
            raise StoreError(f"item feature store {self.folder}: nothing but padding asked of an empty store")
        return self._shards[0].shape[1]

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """The row of ``_where`` of each digest in ``keys``, -1 where absent."""
        get = self._index.get
        return np.fromiter((get(key, -1) for key in keys.tolist()), dtype=np.int64, count=len(keys))

    @staticmethod
    def _write_index(index_file: Path, index: dict) -> None:
        with replacing(index_file) as tmp:
            tmp.write_text(json.dumps(index), encoding="utf-8")

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store ``vectors`` (float32 ``[n, F]``) under ``keys`` (``S16 [n]``) as one new shard."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        name = hashlib.sha256(keys.tobytes()).hexdigest()[:16]
        keys_file, vectors_file, index_file = (
            self.folder / f"{name}.{part}" for part in ("keys.npy", "vectors.npy", "json")
        )
        try:
            for path, array in ((keys_file, keys), (vectors_file, vectors)):
                with replacing(path) as tmp, open(tmp, "wb") as f:
                    np.save(f, array, allow_pickle=False)
            found = vectors_file.stat()
            self._write_index(index_file, {
            "shape": list(vectors.shape),
            "dtype": str(vectors.dtype),
            "keys_sha256": _sha256(keys_file),
            "vectors_sha256": _sha256(vectors_file),
            "vectors_stat": [found.st_size, found.st_mtime_ns],
            })  # fmt: skip
        except OSError as error:
            raise StoreError(
                f"cannot write the item feature store {self.folder} ({error}); set feature_cache_dir "
                "(or $RECBOLE_SRT_CACHE) to a writable folder"
            ) from None
        logger.info("item feature store %s: added %d vectors (%s)", self.folder, len(keys), name)
        self._append(keys, np.load(vectors_file, mmap_mode="c", allow_pickle=False))

    def vectors(
        self, texts: Sequence[str], encode: Callable[[list[str]], np.ndarray], *, padding_row: bool = False
    ) -> np.ndarray:
        """float32 ``[len(texts), F]``: stored vectors, and ``encode(texts never stored)`` (each distinct
        text once), which are stored before returning. ``padding_row``: ``[1 + len(texts), F]`` with an
        all-zero row first (RecBole's padding id 0), stored with the texts.

        When every row asked for is one run of one shard (the same texts asked again in the same
        order), the result is that shard's memory map (copy-on-write): nothing is read until used."""
        keys = digests(texts)
        if padding_row:
            keys = np.concatenate([np.array([PADDING], dtype=DIGEST), keys])
            texts = ["", *texts]  # never encoded: the padding key's vector is zeros
        at = self._find(keys)
        if (at < 0).any():
            missing = np.flatnonzero(at < 0)
            _, first = np.unique(keys[missing], return_index=True)
            first = missing[np.sort(first)]  # each new text once, in the order asked
            pad = keys[first] == PADDING
            new = encode([texts[i] for i in first[~pad]])
            matrix = np.zeros((len(first), new.shape[1] if len(new) else self._dim()), dtype=np.float32)
            matrix[~pad] = new
            self.add(keys[first], matrix)
            at = self._find(keys)
        shard, row = self._where[at].T
        if len(row) and (shard == shard[0]).all() and (np.diff(row) == 1).all():
            return self._shards[shard[0]][row[0] : row[-1] + 1]
        if len(self._shards) == 1:
            return np.asarray(np.take(self._shards[0], row, axis=0))  # ~8x faster than fancy indexing
        out = np.empty((len(texts), self._shards[0].shape[1]), dtype=np.float32)
        for s, vectors in enumerate(self._shards):
            mine = np.flatnonzero(shard == s)
            out[mine] = np.take(vectors, row[mine], axis=0)
        return out
