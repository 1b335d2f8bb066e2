"""Compact in-memory interactions: interned user/item codes plus numpy columns.

Per interaction only 20 bytes are held (int32 user, int32 item, float32 rating, float64 seconds);
each distinct user/item string is held once, in a :class:`Vocab`.
"""

from __future__ import annotations

from itertools import repeat

import numpy as np
import pyarrow as pa

from dataset_prep.readers import Chunk
from dataset_prep.text import is_valid_token


class Vocab:
    """Strings to dense int32 codes, in order of first appearance."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.tokens: list[str] = []
        self.invalid: list[int] = []  # codes whose string cannot be a RecBole token

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, encoded: pa.DictionaryArray, prefix: str = "") -> np.ndarray:
        """Codes of a dictionary-encoded string array; each dictionary entry is looked up once."""
        distinct = encoded.dictionary.to_pylist()
        if prefix:
            distinct = [prefix + s for s in distinct]
        lookup = np.fromiter(map(self.codes.get, distinct, repeat(-1)), np.int32, len(distinct))
        for i in np.flatnonzero(lookup < 0):  # new strings only: a Python loop over the vocabulary, once
            lookup[i] = self.code(distinct[i])
        return lookup[encoded.indices.to_numpy(zero_copy_only=False)]

    def code(self, token: str) -> int:
        """The code of ``token``, assigning the next one if new."""
        code = self.codes.get(token)
        if code is None:
            code = self.codes[token] = len(self.tokens)
            self.tokens.append(token)
            if not is_valid_token(token):
                self.invalid.append(code)
        return code

    def invalid_mask(self) -> np.ndarray:
        """Boolean array over codes: True where the token is unusable."""
        mask = np.zeros(len(self), bool)
        mask[self.invalid] = True
        return mask


class Interactions:
    """Interactions in input order: ``user``/``item`` codes, ``rating``, ``ts`` (seconds)."""

    def __init__(self) -> None:
        self.users = Vocab()
        self.items = Vocab()
        self._chunks: dict[str, list[np.ndarray]] = {"user": [], "item": [], "rating": [], "ts": []}
        self.user = np.empty(0, np.int32)
        self.item = np.empty(0, np.int32)
        self.rating = np.empty(0, np.float32)
        self.ts = np.empty(0, np.float64)

    def add(self, chunk: Chunk, item_prefix: str = "") -> None:
        """Intern a parsed chunk and keep its compact columns."""
        self._chunks["user"].append(self.users.encode(chunk.users))
        self._chunks["item"].append(self.items.encode(chunk.items, item_prefix))
        self._chunks["rating"].append(chunk.rating)
        self._chunks["ts"].append(chunk.ts)

    def freeze(self) -> None:
        """Concatenate the chunks column by column (freeing each column's chunks right after)."""
        for name, parts in self._chunks.items():
            setattr(self, name, np.concatenate([getattr(self, name), *parts]))
            parts.clear()

    def __len__(self) -> int:
        return len(self.user)
