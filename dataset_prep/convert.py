"""``srt-prep convert``: Amazon category files (one or several, any release) -> RecBole atomic files.

Pipeline, out of core in the engine (:mod:`dataset_prep.engine`, DuckDB within ``--memory-limit``, spilling
to ``--temp-dir``): read every interaction file (streamed in blocks), its timestamps checked and normalised
to seconds file by file (:mod:`dataset_prep.timestamps`), into the engine in input order -> give users and
items codes in order of first appearance (:mod:`dataset_prep.table`) -> read the metadata of the items seen
(streamed; the text of the first record of each item goes to the engine); a ratings CSV whose user column
holds metadata asins stops here (swapped columns) -> filters (:mod:`dataset_prep.filters`), each counted
under its own reason, in this order: malformed ids, odd timestamps (``--odd-timestamps drop``), time
range, rating threshold, missing metadata, missing text, excluded users, duplicates, iterative k-core; a
filter that leaves no row stops with its option named -> write ``NAME.inter`` sorted by (user, time, input
order), ``NAME.item``, ``NAME.yaml`` and ``report.json`` into a staging folder swapped in whole
(:class:`~dataset_prep.atomic.Staging`). A rerun whose inputs and options are unchanged, and whose output
files still match their manifest, writes nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from dataset_prep import filters
from dataset_prep.atomic import (
    Staging,
    dataset_config,
    dataset_folder,
    read_report,
    unchanged,
    write_json,
    write_tsv,
    write_yaml,
)
from dataset_prep.engine import MEMORY_LIMIT, Engine, check_memory_limit
from dataset_prep.errors import PrepError
from dataset_prep.formats import CsvLayout
from dataset_prep.readers import FileStats, MetaStats, read_interactions, read_meta
from dataset_prep.registry import Entry
from dataset_prep.report import Report
from dataset_prep.streams import LineBlocks, open_regular, prefetched
from dataset_prep.table import BATCH, AscendingLookup, Interactions
from dataset_prep.timestamps import ODD_POLICIES, UNITS, TimeCheck, iso_date, unit_of

FORMAT_VERSION = 2  # 2: timestamps checked and normalised per file
INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
ITEM_HEADER = [
    "item_id:token",
    "title:token_seq",
    "brand:token",
    "categories:token_seq",
    "description:token_seq",
]
TEXT_FIELDS = ("title", "brand", "categories", "description")
WRITE_BATCH = 1 << 20
# A ratings CSV whose user column matches metadata asins in at least this share of its distinct ids, and
# this many times more often than its item column, has its user and item columns swapped.
SWAP_MIN_SHARE = 0.1
SWAP_RATIO = 4.0
ENGINE_OPTIONS = ("memory_limit", "temp_dir")  # how the engine runs: no part of the output


@dataclass
class ConvertOptions:
    """Everything ``convert`` needs; field names match the CLI options."""

    entries: list[Entry]
    inputs: list[Path]
    output: Path
    name: str
    min_user_inter: int = 5
    min_item_inter: int = 5
    min_rating: float | None = None
    dedup: str = "first"
    start: float | None = None
    end: float | None = None
    missing_meta: str = "drop"
    missing_text: str = "keep"
    max_text_len: int = 1000
    exclude_users_of: list[Path] = field(default_factory=list)
    max_seq_len: int = 50
    force: bool = False
    timestamp_unit: str = "release"  # see dataset_prep.timestamps.UNITS
    odd_timestamps: str = "stop"  # or "drop"
    memory_limit: str = MEMORY_LIMIT  # the engine's, e.g. "4GB"
    temp_dir: Path | None = None  # where the engine spills (default: the output's staging folder)


def default_name(entries: list[Entry]) -> str:
    """``amazon<release>-<category lowercased>`` for one category; merges must be named."""
    if len(entries) != 1:
        raise PrepError("--name is required when merging several categories")
    return f"amazon{entries[0].release.name}-{entries[0].category.lower()}"


def locate(entry: Entry, name: str, inputs: list[Path]) -> Path:
    """Find the file called ``name`` in ``DIR/<release>/`` or ``DIR/`` of each input, gzipped or not."""
    release = entry.release.name
    if (found := _find(name, release, inputs)) is not None:
        return found
    if (odd := _find(name, release, inputs, _present)) is not None:
        open_regular(odd).close()  # raises what it is instead: a FIFO, a device, a symbolic link loop, ...
        return odd
    plain, other = _names_of(name)
    searched = ", ".join(str(d) + _folder_note(d) for d in inputs)
    hint = f"get it with `srt-prep download --release {release} --category {entry.category}`"
    if (misplaced := _find(name, release, inputs, Path.is_dir)) is not None:
        hint = f"{misplaced} is a folder, not the file"
    if name == entry.interactions_file:
        for source, published in entry.release.sources.items():
            if source != entry.source and (there := _find(published.file(entry.category), release, inputs)):
                hint = (
                    f"{there} is there: that is the {source!r} file; read it with --source {source} "
                    f"(or --category {release}:{entry.category}:{source})"
                )
                break
        as_published = Path(entry.interactions_path).name
        there = None if as_published == name else _find(as_published, release, inputs)
        if there is not None:
            hint = (
                f"{there} is there under its published name, which the {release} benchmark's "
                f"0core and 5core files share: rename it to {name} if it is the {entry.source!r} file"
            )
    raise PrepError(f"{entry.label}: file {plain} (or {other}) not found in {searched}; {hint}")


def _folder_note(path: Path) -> str:
    return "" if path.is_dir() else " (not a folder)" if path.exists() else " (no such folder)"


def _names_of(name: str) -> tuple[str, str]:
    """The file name and its gzipped (or plain) twin."""
    return name, name[:-3] if name.endswith(".gz") else name + ".gz"


def _present(path: Path) -> bool:
    """Something other than a folder is there (a file, a FIFO, a link, even a broken one)."""
    return os.path.lexists(path) and not path.is_dir()


def _find(
    name: str, release: str, inputs: list[Path], test: Callable[[Path], bool] = Path.is_file
) -> Path | None:
    """The first ``DIR/<release>/NAME`` or ``DIR/NAME`` (either twin) for which ``test`` holds."""
    for base in inputs:
        for folder in (base / release, base):
            for candidate in _names_of(name):
                if test(folder / candidate):
                    return folder / candidate
    return None


def convert(opts: ConvertOptions) -> dict:
    """Run the conversion; return the report (the previous one, marked ``up_to_date``, for a no-op)."""
    if not opts.entries:
        raise PrepError("nothing to convert: give --category or --spec")
    if opts.timestamp_unit not in UNITS or opts.odd_timestamps not in ODD_POLICIES:
        raise PrepError(
            f"timestamp_unit must be one of {UNITS} and odd_timestamps one of {ODD_POLICIES}, got "
            f"{opts.timestamp_unit!r} and {opts.odd_timestamps!r}"
        )
    check_memory_limit(opts.memory_limit)
    target = dataset_folder(opts.output, opts.name)
    files = [
        (e, locate(e, e.interactions_file, opts.inputs), locate(e, e.meta_file, opts.inputs))
        for e in opts.entries
    ]
    for path in opts.exclude_users_of:
        if not path.is_file():
            what = "is not a file" if path.exists() else "file not found"
            raise PrepError(f"{what} (--exclude-users-of expects a RecBole .inter file)", path)
    if opts.temp_dir is not None and not Path(opts.temp_dir).is_dir():
        raise PrepError("--temp-dir is not a folder", opts.temp_dir)
    fingerprint = _fingerprint(opts, [p for _, i, m in files for p in (i, m)])
    with Staging(target) as stage:
        previous = read_report(target)
        if not opts.force and previous and previous.get("fingerprint") == fingerprint and unchanged(target):
            return {**previous, "up_to_date": True}
        with Engine(opts.memory_limit, Path(opts.temp_dir or stage.folder)) as engine:
            result = _convert(opts, files, fingerprint, stage, engine)
        stage.commit()
    return result


def _convert(
    opts: ConvertOptions,
    files: list[tuple[Entry, Path, Path]],
    fingerprint: str,
    stage: Staging,
    engine: Engine,
) -> dict:
    """Read, filter and write every output file into ``stage``; the report."""
    report = Report()
    multi_release = len({entry.release.name for entry in opts.entries}) > 1
    inter = Interactions(engine)
    input_stats = []
    segments: list[tuple[int, int]] = []  # each file's rows (positions) in the interactions
    for entry, path, _ in files:
        stats = FileStats(str(path))
        times = TimeCheck(
            str(path), entry.release.name, unit_of(entry.layout.time_divisor), opts.timestamp_unit
        )
        first = inter.rows
        dropped = 0
        for chunk in prefetched(read_interactions(path, entry.layout, stats)):
            chunk.ts, ok = times.seconds(chunk.ts)
            if opts.odd_timestamps == "drop" and not ok.all():
                dropped += int((~ok).sum())
                chunk = chunk.where(ok)
            inter.add(chunk, _item_prefix(entry, multi_release))
        if opts.odd_timestamps == "stop":
            times.stop()
        elif dropped:
            report.warn(f"{path}: {times.dropped_note()}")
        segments.append((first, inter.rows))
        _warn_about(stats, report)
        input_stats.append({"entry": entry.label, **asdict(stats), "timestamps": times.record(dropped)})
    inter.intern()
    _read_exclusions(opts.exclude_users_of, engine)
    criteria = filters.Criteria(
        opts.start, opts.end, opts.min_rating, opts.missing_meta == "drop", opts.missing_text == "drop"
    )
    # The codes join and the search for repeats run in the engine while the metadata is read (in Python).
    staging_rows = engine.start(filters.stage_rows(criteria, opts.dedup))
    try:
        meta_records = _read_metadata(files, inter, multi_release, opts, report)
    finally:
        wait([staging_rows])  # also when the metadata fails: that error is the one to report
    staging_rows.result()
    _flag_items(engine, meta_records)
    _check_columns(files, segments, inter)
    filters.apply_metadata(engine, criteria)
    engine.run("DROP TABLE raw")
    counts = _filter(engine, input_stats, opts, report)
    write_tsv(stage.path(f"{opts.name}.inter"), INTER_HEADER, _inter_batches(inter))
    _write_items(stage.path(f"{opts.name}.item"), engine)
    write_yaml(
        stage.path(f"{opts.name}.yaml"),
        dataset_config(opts.output, _names(INTER_HEADER), _names(ITEM_HEADER), opts.max_seq_len),
    )
    result = {
        "name": opts.name,
        "fingerprint": fingerprint,
        "rows": {
            "read": sum(s["lines"] + s["partial_lines"] for s in input_stats),
            "kept": counts.pop("kept"),
        },
        "dropped": report.dropped,
        **counts,
        "inputs": input_stats,
        "metadata": meta_records,
        "options": _options_record(opts),
        "warnings": report.warnings,
    }
    write_json(stage.path("report.json"), result)
    return result


def _filter(engine: Engine, input_stats: list[dict], opts: ConvertOptions, report: Report) -> dict:
    """Apply every filter in order, counting drops in ``report``; the rows kept and user/item counts.
    A filter that leaves no row stops the conversion with a message naming it."""
    drops = report.dropped
    summary = filters.summarise(engine)

    def check(left: int, cause: Callable[[], str]) -> None:
        if not left:
            raise PrepError(
                f"no interaction left after filtering: {cause()} dropped the last rows; "
                f"rows dropped by reason: {json.dumps({k: v for k, v in drops.items() if v})}"
            )

    span = "" if summary.times is None else f"{_day(summary.times[0])} to {_day(summary.times[1])}"
    ratings = "" if summary.ratings is None else f"{summary.ratings[0]:g} to {summary.ratings[1]:g}"
    causes = {
        "malformed_line": lambda: "skipping ids that cannot be RecBole tokens",
        "time_range": lambda: f"--start {_day(opts.start)} / --end {_day(opts.end)} (the data spans {span})",
        "rating_threshold": lambda: f"--min-rating {opts.min_rating:g} (ratings here range from {ratings})",
        "missing_metadata": lambda: (
            "--missing-meta drop (no interacted item has a metadata record; wrong metadata file?)"
        ),
        "missing_text": lambda: "--missing-text drop",
        "excluded_user": lambda: "--exclude-users-of (every user is in the excluded files)",
    }
    for stage in filters.STAGES:
        drops[stage] = summary.dropped[stage]
        if stage == "malformed_line":
            drops[stage] += sum(s["malformed"] for s in input_stats)
            drops["truncated_stream"] = sum(s["partial_lines"] for s in input_stats)
            drops["odd_timestamp"] = sum(s["timestamps"]["dropped"] for s in input_stats)
        check(summary.left_after(stage), causes[stage])
    drops["duplicate"] = filters.duplicates(engine, opts.dedup)
    if opts.dedup == "all" and drops["duplicate"]:
        report.warn(
            f"{drops['duplicate']:,} exact duplicate interactions (the same user, item and time as an "
            "earlier row) dropped, the first of each kept (--dedup all keeps repeats at other times)"
        )
    drops["k_core"], most = filters.k_core(engine, opts.min_user_inter, opts.min_item_inter)
    kept = summary.passed - drops["duplicate"] - drops["k_core"]
    check(
        kept,
        lambda: (
            f"the iterative k-core (--min-user-inter {opts.min_user_inter}, --min-item-inter "
            f"{opts.min_item_inter}; before it the most active user had {most[0]} interactions and the most "
            f"popular item {most[1]}; lower the thresholds or add data)"
        ),
    )

    def seen(table: str, code: str, counts: dict[str, str]) -> dict[str, int]:
        """Per count, the users or items seen (those of a row with usable ids) that meet its condition
        (``kept``: in the k-core)."""
        usable = f"WHERE code IN (SELECT DISTINCT {code} FROM rows WHERE stage <> 1)"
        row = engine.one(
            f"""SELECT {", ".join(f"count(*) FILTER (WHERE {c})" for c in counts.values())}
            FROM (SELECT *, code IN (SELECT {code} FROM alive_{table}) AS kept FROM {table}
                {usable if summary.dropped["malformed_line"] else ""})"""
        )
        return dict(zip(counts, row, strict=True))

    no_text = "has_meta AND NOT has_text"
    item_counts = {
        "before": "true",
        "after": "kept",
        "missing_metadata": "NOT has_meta",
        "missing_text": no_text,
        "kept_without_metadata": "kept AND NOT has_meta",
        "kept_without_text": f"kept AND {no_text}",
    }
    return {
        "kept": kept,
        "users": seen("users", "uc", {"before": "true", "after": "kept", "excluded": "excluded"}),
        "items": seen("items", "ic", item_counts),
    }


def _day(seconds: float | None) -> str:
    """A bound of the time range as :func:`~dataset_prep.timestamps.iso_date` writes it, "none" for none."""
    return "none" if seconds is None else iso_date(float(seconds), time_of_day=True)


def _check_columns(
    files: list[tuple[Entry, Path, Path]], segments: list[tuple[int, int]], inter: Interactions
) -> None:
    """Stop when a ratings CSV's user column holds item asins (metadata keys that are no item here) far more
    often than its item column holds items with metadata: the file has its first two columns swapped."""
    for (entry, path, meta_path), (lo, hi) in zip(files, segments, strict=True):
        if not isinstance(entry.layout, CsvLayout) or lo == hi:
            continue
        whole = (lo, hi) == (0, inter.rows)  # one file: its distinct ids are the tables users and items
        users, items = (
            ("SELECT token FROM users", "SELECT token FROM items")
            if whole
            else (f"SELECT DISTINCT {c} AS token FROM raw WHERE r >= $1 AND r < $2" for c in ("user", "item"))
        )
        n_users, user_hits, n_items, item_hits = inter.engine.one(
            f"""WITH su AS ({users}), si AS ({items}), hit AS (SELECT token FROM items WHERE has_meta)
            SELECT (SELECT count(*) FROM su), (SELECT count(*) FROM su SEMI JOIN meta_keys ON token = key),
                (SELECT count(*) FROM si), (SELECT count(*) FROM si SEMI JOIN hit USING (token))""",
            [] if whole else [lo, hi],
        )
        user_share, item_share = user_hits / n_users, item_hits / n_items
        if user_share >= SWAP_MIN_SHARE and user_share >= SWAP_RATIO * item_share:
            order = ["?"] * 4
            order[entry.layout.user_col], order[entry.layout.item_col] = "user", "item"
            order[entry.layout.rating_col], order[entry.layout.time_col] = "rating", "timestamp"
            swapped = [{"user": "item", "item": "user"}.get(c, c) for c in order]
            raise PrepError(
                f"user and item columns look swapped: {user_hits:,} of {n_users:,} ids in the user "
                f"column are asins of {meta_path.name}, against {item_hits:,} of {n_items:,} in "
                f"the item column. Release {entry.release.name} ratings files are {','.join(order)}; this "
                f"one looks like {','.join(swapped)}. Swap its first two columns, e.g. "
                "`awk -F, -v OFS=, '{print $2,$1,$3,$4}'` (zcat it first if gzipped)",
                path,
            )


def _names(header: list[str]) -> list[str]:
    return [column.split(":")[0] for column in header]


def _item_prefix(entry: Entry, multi_release: bool) -> str:
    """Items of different releases stay distinct in a multi-release merge: ``2014_B000...``."""
    return f"{entry.release.name}_" if multi_release else ""


def _warn_about(stats: FileStats, report: Report) -> None:
    if stats.truncated:
        report.warn(f"{stats.path}: stream is truncated; kept the {stats.lines} complete lines")
    if stats.malformed:
        report.warn(f"{stats.path}: skipped {stats.malformed} malformed lines, e.g. {stats.examples[0]}")
    if stats.non_utf8:
        report.warn(f"{stats.path}: {stats.non_utf8} lines had non-UTF-8 bytes (replaced by U+FFFD)")


class _Appender:
    """Rows for an engine table, appended a batch at a time."""

    def __init__(self, engine: Engine, table: str, columns: tuple[str, ...]) -> None:
        self.engine, self.table = engine, table
        self.columns: dict[str, list] = {name: [] for name in columns}

    def add(self, *values: object) -> None:
        """One row."""
        self.extend(*([value] for value in values))

    def extend(self, *columns: list) -> None:
        """Several rows, given column by column."""
        for held, values in zip(self.columns.values(), columns, strict=True):
            held.extend(values)
        if len(next(iter(self.columns.values()))) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Append the rows held so far."""
        if next(iter(self.columns.values())):
            self.engine.append(self.table, pa.table(self.columns))
            for column in self.columns.values():
                column.clear()


def _read_metadata(
    files: list[tuple[Entry, Path, Path]],
    inter: Interactions,
    multi_release: bool,
    opts: ConvertOptions,
    report: Report,
) -> list[dict]:
    """Stream every metadata file into table ``meta`` (each record of an item seen; text cleaned) and record
    the keys of the other records in ``meta_keys`` (the swapped-columns check). Each file's counts."""
    engine = inter.engine
    engine.run(
        """CREATE TABLE meta (seq BIGINT, file INTEGER, token VARCHAR, title VARCHAR, brand VARCHAR,
            categories VARCHAR, description VARCHAR, has_text BOOLEAN);
        CREATE TABLE meta_keys (key VARCHAR)"""
    )
    # Python's 64-bit hash of each item id: a collision costs only the parse of a line never needed.
    hashes = inter.item_hashes()
    meta = _Appender(engine, "meta", ("seq", "file", "token", *TEXT_FIELDS, "has_text"))
    other_keys = _Appender(engine, "meta_keys", ("key",))
    keep_other_keys = any(isinstance(entry.layout, CsvLayout) for entry, _, _ in files)
    records = []
    seq = itertools.count()  # each record's position across the metadata files
    for index, (entry, _, path) in enumerate(files):
        prefix = _item_prefix(entry, multi_release)

        def wanted(keys: list[str], prefix: str = prefix) -> list[bool]:
            """Which keys are items seen (their hash is one of an item's)."""
            wanted_hashes = np.fromiter((hash(prefix + key) for key in keys), np.int64, len(keys))
            at = np.minimum(np.searchsorted(hashes, wanted_hashes), max(len(hashes) - 1, 0))
            found = (hashes[at] == wanted_hashes) if len(hashes) else np.zeros(len(keys), bool)
            if keep_other_keys:
                other_keys.extend([key for key, hit in zip(keys, found.tolist(), strict=True) if not hit])
            return found.tolist()

        stats = MetaStats(str(path))
        for key, text in read_meta(path, entry.release.meta_layout, wanted, stats, opts.max_text_len):
            fields = (getattr(text, name) for name in TEXT_FIELDS)
            meta.add(next(seq), index, prefix + key, *fields, not text.is_empty())
        _warn_about(stats, report)
        records.append({"entry": entry.label, **asdict(stats)})
    meta.flush()
    other_keys.flush()
    return records


def _flag_items(engine: Engine, records: list[dict]) -> None:
    """Give ``items`` the flags of its first metadata record (``meta_seq``, ``has_meta``, ``has_text``) and
    each metadata file's record its ``duplicate_records`` (records of an item that has an earlier one)."""
    engine.run(
        """CREATE TABLE meta_first AS SELECT token, min(seq) AS seq, arg_min(has_text, seq) AS has_text
            FROM meta SEMI JOIN items USING (token) GROUP BY token;
        CREATE OR REPLACE TABLE items AS SELECT items.*, m.seq AS meta_seq, m.seq IS NOT NULL AS has_meta,
            coalesce(m.has_text, false) AS has_text FROM items LEFT JOIN meta_first m USING (token)"""
    )
    repeats = dict(
        engine.rows(
            """SELECT file, count(*) FROM meta SEMI JOIN items USING (token) ANTI JOIN meta_first USING (seq)
            GROUP BY file"""
        )
    )
    for index, record in enumerate(records):
        record["duplicate_records"] = repeats.get(index, 0)


def _read_exclusions(paths: list[Path], engine: Engine) -> None:
    """Give ``users`` the flag ``excluded``: the user appears in one of the given ``.inter`` files."""
    engine.run("CREATE TABLE excluded (token VARCHAR)")
    tokens = _Appender(engine, "excluded", ("token",))
    for path in paths:  # the user_id column of each RecBole .inter file, a block of lines at a time
        column = None
        for block in LineBlocks(path):
            users = []
            for line in block.lines():
                cells = line.decode("utf-8", errors="replace").split("\t")
                if column is None:
                    names = [c.split(":")[0] for c in cells]
                    if "user_id" not in names:
                        raise PrepError("no user_id column in the header of this .inter file", path, 1)
                    column = names.index("user_id")
                elif len(cells) > column:
                    users.append(cells[column])
            tokens.extend(users)
    tokens.flush()
    engine.run(
        """CREATE OR REPLACE TABLE users AS
        SELECT users.*, token IN (SELECT token FROM excluded) AS excluded FROM users"""
    )


def _inter_batches(inter: Interactions) -> Iterator[pa.RecordBatch]:
    """The kept rows in output order as arrow batches of tokens; integral numbers are written as integers.
    User ids come from a merge with the users in code order, item ids from the item ids by code."""
    engine = inter.engine
    users = AscendingLookup(
        engine.batches(
            "SELECT code, token FROM users WHERE code IN (SELECT uc FROM alive_users) ORDER BY code", BATCH
        )
    )
    items = inter.item_tokens()
    for batch in engine.batches(filters.KEPT_ROWS, WRITE_BATCH):
        yield pa.record_batch(
            [
                users.take(batch.column(0).to_numpy()),
                items.take(batch.column(1)),
                _number_column(batch.column(2).to_numpy()),
                _number_column(batch.column(3).to_numpy()),
            ],
            names=["user_id", "item_id", "rating", "timestamp"],
        )


def _number_column(values: np.ndarray) -> pa.Array:
    """Integers when every value is integral (same text, faster to format), else the floats."""
    as_int = values.astype(np.int64)
    return pa.array(as_int if np.array_equal(as_int, values) else values)


def _write_items(path: Path, engine: Engine) -> None:
    """``NAME.item``: kept items with metadata in the order of their first record, then kept items without
    metadata (empty text) in order of first appearance."""
    kept = "code IN (SELECT ic FROM alive_items)"
    with open(path, "w", encoding="utf-8") as out:
        out.write("\t".join(ITEM_HEADER) + "\n")
        for batch in engine.batches(
            f"""SELECT items.token, {", ".join(TEXT_FIELDS)} FROM items JOIN meta ON meta.seq = items.meta_seq
            WHERE {kept} ORDER BY meta_seq""",
            BATCH,
        ):
            out.writelines("\t".join(row) + "\n" for row in zip(*batch.to_pydict().values(), strict=True))
        for batch in engine.batches(
            f"SELECT token FROM items WHERE NOT has_meta AND {kept} ORDER BY code", BATCH
        ):
            out.writelines(
                token + "\t" * (len(ITEM_HEADER) - 1) + "\n" for token in batch.column(0).to_pylist()
            )


def _options_record(opts: ConvertOptions) -> dict:
    """The options as JSON values (paths resolved), but ``force``."""
    record = asdict(opts)
    del record["force"]
    record["entries"] = [e.label for e in opts.entries]
    for key in ("inputs", "exclude_users_of"):
        record[key] = [str(Path(p).resolve()) for p in record[key]]
    for key in ("output", "temp_dir"):
        record[key] = None if record[key] is None else str(Path(record[key]).resolve())
    return record


def _fingerprint(opts: ConvertOptions, paths: list[Path]) -> str:
    """Hash of the options that shape the output and of each input file's path, size and modification time."""
    files = [*paths, *opts.exclude_users_of]
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    options = {k: v for k, v in _options_record(opts).items() if k not in ENGINE_OPTIONS}
    payload = json.dumps([FORMAT_VERSION, options, stats], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
