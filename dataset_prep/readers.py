"""One reader per record format: ratings CSV, review JSON lines, metadata (JSON or Python literals).

Every reader streams :class:`~dataset_prep.streams.Block` objects. Interaction blocks take a fast path
(pyarrow's multi-threaded CSV/JSON parsers) and fall back to a line-by-line Python parser for any block
the fast path does not accept cleanly; the Python parser defines what counts as a malformed line, so
both paths agree. Metadata is parsed line by line (``json.loads`` or ``ast.literal_eval``, never
``eval``); lines of items that have no interactions are skipped before parsing.
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from dataset_prep.errors import PrepError
from dataset_prep.formats import CsvLayout, JsonLayout, MetaLayout
from dataset_prep.streams import Block, LineBlocks
from dataset_prep.text import clean_text, join_categories

MAX_EXAMPLES = 5
# A metadata file whose first this many records are all malformed is the wrong file: its reading stops there.
WRONG_FILE_LINES = 10_000
# Interaction files are parsed in blocks of this size; a few are in flight at once (read ahead, parsed, being
# stored), which is most of what the converter holds outside the engine.
INTERACTION_BLOCK = 16 << 20
Layout = CsvLayout | JsonLayout
_BAD_RECORD = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError)  # what a bad line raises


@dataclass
class FileStats:
    """What reading one file found. ``lines`` counts complete non-blank lines."""

    path: str
    lines: int = 0
    parsed: int = 0
    malformed: int = 0
    non_utf8: int = 0
    truncated: bool = False
    partial_lines: int = 0
    examples: list[str] = field(default_factory=list)

    def bad(self, line: int, err: BaseException) -> None:
        """Count one malformed line; keep the first few as examples."""
        self.malformed += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"line {line}: {str(err) or type(err).__name__}")

    def finish(self, blocks: LineBlocks) -> None:
        """Record the stream's end state (truncation) after the last block."""
        self.truncated = blocks.truncated
        self.partial_lines = int(bool(blocks.partial_tail.strip()))

    def check_not_empty(self, what: str) -> None:
        """Raise :class:`PrepError` when the file held no line at all."""
        if self.lines == 0 and self.partial_lines == 0:
            if self.truncated:
                raise PrepError(
                    f"the gzip stream ends before any {what} line (truncated download?)", self.path
                )
            raise PrepError(f"empty {what} file", self.path)

    def check_usable(self, what: str) -> None:
        """Raise :class:`PrepError` when the file held no usable record at all."""
        self.check_not_empty(what)
        if self.parsed == 0:
            first = self.examples[0] if self.examples else "only a truncated line"
            raise PrepError(
                f"no readable {what} record; wrong file or format? First problem: {first}", self.path
            )


@dataclass
class Chunk:
    """Interactions parsed from one block, in file order: ids as strings, timestamps as in the file (unit
    checked and converted by :mod:`dataset_prep.timestamps`)."""

    users: pa.StringArray
    items: pa.StringArray
    rating: np.ndarray
    ts: np.ndarray

    @classmethod
    def of(cls, users: pa.Array, items: pa.Array, rating: np.ndarray, ts: np.ndarray) -> Chunk:
        """Rating as float32, ts as float64."""
        return cls(users, items, rating.astype(np.float32), ts.astype(np.float64))

    def where(self, mask: np.ndarray) -> Chunk:
        """Only the rows where ``mask`` is True."""
        keep = pa.array(mask)
        return Chunk(self.users.filter(keep), self.items.filter(keep), self.rating[mask], self.ts[mask])


def read_interactions(path: Path, layout: Layout, stats: FileStats) -> Iterator[Chunk]:
    """Stream the interaction file at ``path``; fills ``stats``; raises if nothing is readable."""
    blocks = LineBlocks(path, block_size=INTERACTION_BLOCK, progress=path.name)
    for block in blocks:
        if block.first_line == 1:  # skip the header line, if the layout has one and the file starts so
            cut = block.data.find(b"\n") + 1
            if _is_header(block.data[:cut].decode("utf-8", errors="replace"), layout):
                block = Block(block.data[cut:], 2)
        chunk = _fast_block(block, layout)
        if chunk is None:
            chunk = _slow_block(block, layout, stats)
        else:
            stats.lines += len(chunk.rating)
            stats.parsed += len(chunk.rating)
        if len(chunk.rating):
            yield chunk
        if stats.lines and not stats.parsed:  # a whole first block of rejects: wrong format, stop early
            break
    stats.finish(blocks)
    stats.check_usable("interaction")


def _is_header(line: str, layout: Layout | MetaLayout) -> bool:
    """True when ``line`` is the header line of a CSV layout that has one."""
    return (
        isinstance(layout, CsvLayout)
        and layout.header is not None
        and line.rstrip("\r\n") == ",".join(layout.header)
    )


def _slow_block(block: Block, layout: Layout, stats: FileStats) -> Chunk:
    parse_line = _csv_line if isinstance(layout, CsvLayout) else _json_line
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[float] = []
    for number, raw in enumerate(block.lines(), start=block.first_line):
        if not raw.strip():
            continue
        stats.lines += 1
        try:
            user, item, rating, ts = parse_line(_decode(raw, stats), layout)
        except (ValueError, TypeError, RecursionError) as err:
            stats.bad(number, err)
            continue
        users.append(user)
        items.append(item)
        ratings.append(rating)
        stamps.append(ts)
    stats.parsed += len(users)
    return Chunk.of(
        pa.array(users, pa.string()), pa.array(items, pa.string()), np.asarray(ratings), np.asarray(stamps)
    )


def _decode(raw: bytes, stats: FileStats) -> str:
    """A line as text; invalid UTF-8 bytes become U+FFFD and the line is counted as non-UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.non_utf8 += 1
        return raw.decode("utf-8", errors="replace")


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"{name} is not a number: {value!r:.40}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} is not finite: {value!r:.40}")
    return number


def _ident(value: object, name: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} is missing or not a string: {value!r:.40}")
    return value


def _csv_line(line: str, layout: CsvLayout) -> tuple[str, str, float, float]:
    cells = line.split(",")
    if len(cells) != 4:
        raise ValueError(f"expected 4 comma-separated fields, found {len(cells)}: {_snip(line)}")
    return (
        _ident(cells[layout.user_col], "user"),
        _ident(cells[layout.item_col], "item"),
        _finite(cells[layout.rating_col], "rating"),
        _finite(cells[layout.time_col], "timestamp"),
    )


def _json_line(line: str, layout: JsonLayout) -> tuple[str, str, float, float]:
    record = _parse_object(line)
    user, item, rating, ts = keys = layout.user_key, layout.item_key, layout.rating_key, layout.time_key
    for key in keys:
        if key not in record:
            raise ValueError(f"missing key {key!r}")
    return (
        _ident(record[user], user),
        _ident(record[item], item),
        _finite(record[rating], rating),
        _finite(record[ts], ts),
    )


def _columns(layout: Layout) -> tuple:
    """Where the user, item, rating and time are: CSV column numbers or JSON keys."""
    if isinstance(layout, CsvLayout):
        return layout.user_col, layout.item_col, layout.rating_col, layout.time_col
    return layout.user_key, layout.item_key, layout.rating_key, layout.time_key


def _fast_block(block: Block, layout: Layout) -> Chunk | None:
    """pyarrow's multi-threaded CSV or JSON-lines parser (only the needed fields) on a block; None (use the
    careful path) on any row it does not take cleanly: wrong field count, non-numeric rating/time (both
    raise), null or empty id, non-finite number."""
    types = (pa.string(), pa.string(), pa.float64(), pa.float64())
    data = io.BytesIO(block.data)
    try:
        if isinstance(layout, CsvLayout):
            names = [f"c{i}" for i in _columns(layout)]
            table = pacsv.read_csv(
                data,
                read_options=pacsv.ReadOptions(column_names=["c0", "c1", "c2", "c3"], block_size=4 << 20),
                parse_options=pacsv.ParseOptions(quote_char=False),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict(zip(names, types, strict=True)), strings_can_be_null=False
                ),
            )
        else:
            names = list(_columns(layout))
            schema = pa.schema(zip(names, types, strict=True))
            table = pajson.read_json(
                data,
                read_options=pajson.ReadOptions(block_size=4 << 20),
                parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
            )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    users, items = (table[name].combine_chunks() for name in names[:2])
    rating, ts = (table[name].to_numpy() for name in names[2:])
    for ids in (users, items):
        if ids.null_count or (len(ids) and pc.min(pc.binary_length(ids)).as_py() == 0):
            return None
    if any(a.dtype == object or not np.isfinite(a).all() for a in (rating, ts)):  # object: nulls present
        return None
    return Chunk.of(users, items, rating, ts)


@dataclass
class ItemText:
    """Cleaned text fields of one item (each "" when absent)."""

    title: str
    brand: str
    categories: str
    description: str

    def is_empty(self) -> bool:
        """True when no field has any text."""
        return not (self.title or self.brand or self.categories or self.description)


@dataclass
class MetaStats(FileStats):
    """Metadata reading counts on top of :class:`FileStats`."""

    not_needed: int = 0  # lines of items without interactions (not parsed)


def read_meta(
    path: Path,
    layout: MetaLayout,
    wanted: Callable[[list[str]], Sequence[bool]],
    stats: MetaStats,
    max_text_len: int,
) -> Iterator[tuple[str, ItemText]]:
    """Yield ``(item key, text)`` for every metadata record whose item ``wanted`` accepts. ``wanted`` takes a
    list of keys (the keys of a block's lines, found without parsing) and says which are needed."""
    key = re.escape(layout.item_key.encode())
    quick_key = re.compile(rb"""['"]""" + key + rb"""['"]\s*:\s*(?:'([^'\\]*)'|"([^"\\]*)")""")
    blocks = LineBlocks(path, progress=path.name)
    for block in blocks:
        lines = block.lines()
        quick = [_quick_item(quick_key.search(raw)) for raw in lines]
        verdicts = iter(wanted([k for k in quick if k is not None]))
        for number, (raw, quick_item) in enumerate(zip(lines, quick, strict=True), start=block.first_line):
            needed = None if quick_item is None else next(verdicts)
            if not raw.strip():
                continue
            stats.lines += 1
            if needed is False:
                stats.not_needed += 1
                continue
            try:
                record, item = _meta_record(_decode(raw, stats), layout)
            except _BAD_RECORD as err:
                stats.bad(number, err)
                if stats.malformed == WRONG_FILE_LINES and not stats.parsed:
                    break
                continue
            stats.parsed += 1
            if needed if item == quick_item else wanted([item])[0]:
                yield item, _item_text(record, layout, max_text_len)
            else:
                stats.not_needed += 1
        if stats.malformed == WRONG_FILE_LINES and not stats.parsed:  # the wrong file: stop early
            break
    stats.finish(blocks)
    stats.check_not_empty("metadata")
    if stats.parsed == 0 and stats.malformed:
        stats.check_usable("metadata")


def _quick_item(found: re.Match[bytes] | None) -> str | None:
    """The item key a metadata line names, found without parsing the line (None if not found)."""
    return None if found is None else (found.group(1) or found.group(2) or b"").decode("utf-8", "replace")


def check_first_lines(path: Path, layout: Layout | MetaLayout, count: int = 5) -> None:
    """Raise :class:`PrepError` unless the first ``count`` non-blank lines are records of ``layout``: a quick
    check that a download is the file it claims to be (not an HTML page, not another layout)."""
    seen = 0
    for block in LineBlocks(path, block_size=1 << 16):
        for number, raw in enumerate(block.lines(), start=block.first_line):
            line = raw.decode("utf-8", errors="replace")
            if not line.strip() or (number == 1 and _is_header(line, layout)):
                continue
            if line.lstrip(" \t").startswith("<"):
                raise PrepError(f"is an HTML page, not a data file (starts {_snip(line)})", path)
            try:
                if isinstance(layout, MetaLayout):
                    _meta_record(line, layout)
                elif isinstance(layout, CsvLayout):
                    _csv_line(line, layout)
                else:
                    _json_line(line, layout)
            except _BAD_RECORD as err:
                raise PrepError(f"not the release's record layout: {err}", path, number) from None
            seen += 1
            if seen == count:
                return
    if not seen:
        raise PrepError("holds no record", path)


def _meta_record(line: str, layout: MetaLayout) -> tuple[dict, str]:
    """A metadata line's record and item key (ValueError, TypeError, SyntaxError... if it is not one)."""
    record = _parse_object(line, layout.syntax)
    return record, _ident(record.get(layout.item_key), layout.item_key)


def _snip(line: str) -> str:
    return repr(line.strip()[:60])


# The 2014 'related' value (lists of asins, most of a line's bytes, never used here) in its exact shape;
# cutting it before parsing makes ast.literal_eval ~2.5x faster. Anything else is parsed as it is.
_RELATED_2014 = re.compile(r"'related': \{(?:'[a-z_]+': \[(?:'[A-Za-z0-9]+'(?:, )?)*\](?:, )?)*\}(?:, )?")


def _parse_object(line: str, syntax: str = "json") -> dict:
    """A JSON object, or (``syntax="python"``: a 2014 metadata line) a Python dict literal.
    ``ast.literal_eval`` evaluates literals only, so a line such as ``__import__('os').system(...)`` is
    rejected, never run."""
    try:
        if syntax == "json":
            record = json.loads(line)
        else:
            record = ast.literal_eval(_RELATED_2014.sub("", line.strip()))
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg}): {_snip(line)}") from None
    except (ValueError, SyntaxError) as err:  # from ast.literal_eval
        raise ValueError(f"not a Python dict literal ({type(err).__name__}): {_snip(line)}") from None
    if not isinstance(record, dict):
        what = "a JSON object" if syntax == "json" else "a Python dict literal"
        raise ValueError(f"not {what}: {_snip(line)}")
    return record


def _item_text(record: dict, layout: MetaLayout, max_text_len: int) -> ItemText:
    categories = record.get(layout.categories_key)
    categories = list(categories) if isinstance(categories, list | tuple) else [categories]
    if layout.main_category_key:
        categories.insert(0, record.get(layout.main_category_key))
    return ItemText(
        title=clean_text(record.get(layout.title_key), max_text_len),
        brand=clean_text(record.get(layout.brand_key), max_text_len),
        categories=join_categories(c for c in categories if c),
        description=clean_text(record.get(layout.description_key), max_text_len),
    )
