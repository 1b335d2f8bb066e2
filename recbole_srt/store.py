"""A content-keyed store of text vectors: a text is encoded once, ever, per encoder setting.

Every dataset, cold-start copy, pre-training mix, fine-tuning target and serving catalog that
uses the same encoder setting reads the same store, keyed by the text itself (BLAKE2b-128 of its
UTF-8 bytes), so only texts never seen before are encoded.

Layout of one setting's folder (:attr:`ItemEncoder.setting` names it)::

    <folder>/<shard>.keys.npy      S16 [n]     digests of the shard's texts
    <folder>/<shard>.vectors.npy   float32 [n, F]
    <folder>/<shard>.json          shape, dtype, and a record (:func:`record_file`) of each file

A shard is written once (atomically, the index last: a shard without its index does not exist)
and never changed; each new batch of texts adds one, in the order asked. Reading memory-maps the
vectors: opening a store of a million items reads only its keys, and asking again for the texts of
one shard in its order returns the mapped rows themselves, copying nothing.

**Every read is verified** (:func:`verify_file`, the one verified-read path, shared with the encoder's
cache of exported models): a shard is used only while each of its two files is the file its index
records, untouched since (the same size, modification and change times and inode; the change time
cannot be set back, so a file written, replaced, swapped or renamed over since fails it) or, when not,
hashed again to the recorded SHA-256. A damaged shard (or one whose index cannot be read) is dropped with
its files and one warning, and its texts are encoded again when they are asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from recbole_srt.files import replacing

logger = logging.getLogger(__name__)

DIGEST = np.dtype("S16")
# The key of the all-zero row a RecBole feature matrix starts with (internal id 0, padding). No text
# hashes to it (BLAKE2b-128 would have to return 16 zero bytes), and it is never encoded.
PADDING = b"\0" * 16


class StoreError(ValueError):
    """The store, or the encoder cache beside it, cannot be written."""


def unwritable(what: str, folder: Path, error: OSError) -> StoreError:
    """The one error of a cache under ``feature_cache_dir`` that cannot be written."""
    return StoreError(
        f"cannot write the {what} {folder} ({error}); set feature_cache_dir (or $RECBOLE_SRT_CACHE) to a "
        "writable folder"
    )


def digests(texts: Sequence[str]) -> np.ndarray:
    """``S16 [len(texts)]``: BLAKE2b-128 of each text's UTF-8 bytes."""
    blake2b = hashlib.blake2b
    return np.array([blake2b(t.encode(), digest_size=16).digest() for t in texts], dtype=DIGEST)


def _regular(path: Path) -> os.stat_result:
    """``path``'s stat; ``ValueError`` unless a regular file (a FIFO or a device would block or never end)."""
    found = os.stat(path)
    if not stat.S_ISREG(found.st_mode):
        raise ValueError("not a regular file")
    return found


def _signature(found: os.stat_result) -> list[int]:
    """What any write, truncation, replacement or rename of a file changes (the change time cannot be set
    back)."""
    return [found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino]


def record_file(path: Path) -> dict:
    """What :func:`verify_file` checks ``path`` against later: its SHA-256 and its stat signature."""
    with open(path, "rb") as f:
        found = os.fstat(f.fileno())
        return {"sha256": hashlib.file_digest(f, "sha256").hexdigest(), "stat": _signature(found)}


def verify_file(path: Path, record: Mapping) -> tuple[str | None, dict | None]:
    """Whether ``path`` holds what ``record`` (:func:`record_file`) describes: ``(problem, None)`` when it
    does not; ``(None, fresh)`` when it does, ``fresh`` the record to keep when only its stat changed (a
    copy, a restore), else ``None``. A file whose stat is the recorded one is not read; any other is hashed
    in full. Never raises for a missing, unreadable or special file: that is a problem."""
    try:
        if _signature(_regular(path)) == record.get("stat"):
            return None, None
        fresh = record_file(path)
    except (OSError, ValueError) as error:
        return f"unreadable ({getattr(error, 'strerror', None) or error})", None
    if fresh["sha256"] != record.get("sha256"):
        return "differs from the SHA-256 recorded when it was written", None
    return None, fresh


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
        """``(keys, vectors)`` of one shard, verified (module docstring); ``None`` when it is damaged, its
        files removed (with one warning): the shard no longer exists, and its texts are encoded again."""
        stem = index_file.name.removesuffix(".json")
        files = {part: index_file.with_name(f"{stem}.{part}.npy") for part in ("keys", "vectors")}
        try:
            _regular(index_file)
            index = json.loads(index_file.read_text(encoding="utf-8"))
            if not isinstance(index, dict):
                raise ValueError(f"a JSON {type(index).__name__}, not an object")
        except (OSError, ValueError) as error:
            problem, fresh = f"index unreadable ({error})", {}
        else:
            problem, fresh = self._verify(index, files)
        if problem is None:
            try:
                keys = np.load(files["keys"], allow_pickle=False)
                vectors = np.load(files["vectors"], mmap_mode="c", allow_pickle=False)
            except (OSError, ValueError, EOFError) as error:  # as written, but not by this store
                problem = f"not readable as arrays ({error})"
        if problem:
            logger.warning("item feature store %s: shard %s: %s; re-encoding", self.folder, stem, problem)
            with contextlib.suppress(OSError):
                for path in (index_file, *files.values()):
                    path.unlink(missing_ok=True)
            return None
        if fresh:
            with contextlib.suppress(OSError):  # a read-only store is hashed again at each opening
                self._write_index(index_file, {**index, **fresh})
        return keys, vectors

    @staticmethod
    def _verify(index: dict, files: dict[str, Path]) -> tuple[str | None, dict]:
        """The first problem of the shard's files against its ``index``, and the records to refresh."""
        fresh = {}
        for part, path in files.items():
            # an index of recbole-srt 0.1.0 records only SHA-256s: its files are hashed once, then recorded
            problem, record = verify_file(path, index.get(part) or {"sha256": index.get(f"{part}_sha256")})
            if problem:
                return f"{part} file {problem}", {}
            if record:
                fresh[part] = record
        return None, fresh

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
            self._write_index(index_file, {
            "shape": list(vectors.shape),
            "dtype": str(vectors.dtype),
            "keys": record_file(keys_file),
            "vectors": record_file(vectors_file),
            })  # fmt: skip
        except OSError as error:
            raise unwritable("item feature store", self.folder, error) from None
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
