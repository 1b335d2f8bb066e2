"""Item catalogs: the text of each item, read from a RecBole ``.item`` file or a serving catalog.

1. **Reading** (:func:`read_item_texts`, :func:`read_catalog`): a RecBole ``.item`` atomic file (parsed as
   RecBole parses it, so tokens match ``dataset.field2id_token``), a ``.jsonl`` or a ``.tsv`` catalog.
   Default text fields: every ``token``/``token_seq`` field but the id (``.item``), every field but the id
   (others). A malformed line (wrong field count, not a JSON object, no id, not UTF-8) is an error naming
   the file and the line.
2. **Joining** (:func:`join_text`): an item's text is its non-empty field values joined by ``". "``.
3. **Coverage** (:func:`check_text_coverage`): nearly all texts empty (:data:`EMPTY_TEXT_LIMIT`) is an
   error, some empty a warning.

The encoder is :mod:`recbole_srt.encoder`; the feature matrix of a RecBole dataset, aligned to its
internal ids, is :mod:`recbole_srt.features`.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dataset_prep.text import join_text

logger = logging.getLogger(__name__)

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


def _item_texts(
    frame: pd.DataFrame,
    id_field: str,
    fields: Sequence[str],
    source: Path,
    columns: Sequence[str] | None = None,
) -> ItemTexts:
    """Texts of ``frame``'s rows (all strings); the first row of a repeated id is kept. ``columns``: every
    field of the file (default: the frame's), which the errors name."""
    columns = list(frame.columns if columns is None else columns)
    if id_field not in frame.columns:
        raise ItemFeatureError(f"{source}: no {id_field!r} field (fields: {columns})")
    unknown = [f for f in fields if f not in frame.columns]
    if unknown or not fields:
        raise ItemFeatureError(f"{source}: text fields {list(fields)} not usable; the file has {columns}")
    duplicates = int(frame.duplicated(id_field).sum())
    if duplicates:
        logger.warning("%s: %d repeated item ids, first row kept", source, duplicates)
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
    for number, line in enumerate(io.StringIO(text), 1):  # split at "\n" only; a "\r" before it stays
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
    return _item_texts(frame, item_id_field, text_fields, item_file, [c.split(":", 1)[0] for c in header])


def _jsonl_records(path: Path, item_id_field: str) -> list[dict]:
    """The objects of a ``.jsonl`` catalog, each with a non-empty ``item_id_field``."""
    records = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            record, problem = None, f"not valid JSON ({error.msg})"
        else:
            problem = None if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object"
        if problem is None and record.get(item_id_field) in (None, ""):
            problem = f"no {item_id_field!r}"
        if problem:
            raise ItemFeatureError(f"{path}, line {number}: {problem}")
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
