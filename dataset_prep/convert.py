"""``srt-prep convert``: Amazon category files (one or several, any release) -> RecBole atomic files.

Pipeline: read every interaction file (streamed, interned into compact arrays), its timestamps checked
and normalised to seconds file by file (:mod:`dataset_prep.timestamps`) -> read the metadata of the items
seen (streamed to a spool file); a ratings CSV whose user column holds metadata asins stops here (swapped
columns) -> filters, each counted under its own reason, in this order: malformed ids, odd timestamps
(``--odd-timestamps drop``), time range, rating threshold, missing metadata, missing text, excluded
users, duplicates, iterative k-core; a filter that leaves no row stops with its option named -> write
``NAME.inter`` sorted by (user, time) stably, ``NAME.item``, ``NAME.yaml`` and ``report.json`` into a
staging folder swapped in whole (:class:`~dataset_prep.atomic.Staging`). A rerun whose inputs and options
are unchanged, and whose output files still match their manifest, writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
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
from dataset_prep.errors import PrepError
from dataset_prep.formats import CsvLayout
from dataset_prep.readers import FileStats, MetaStats, read_interactions, read_meta
from dataset_prep.registry import Entry, file_name
from dataset_prep.report import Report
from dataset_prep.streams import LineBlocks, prefetched
from dataset_prep.table import Interactions
from dataset_prep.timestamps import ODD_POLICIES, UNITS, TimeCheck, unit_of

FORMAT_VERSION = 2  # 2: timestamps checked and normalised per file
INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
ITEM_HEADER = [
    "item_id:token",
    "title:token_seq",
    "brand:token",
    "categories:token_seq",
    "description:token_seq",
]
WRITE_BATCH = 1 << 20
# A ratings CSV whose user column matches metadata asins in at least this share of its distinct ids, and
# this many times more often than its item column, has its user and item columns swapped.
SWAP_MIN_SHARE = 0.1
SWAP_RATIO = 4.0


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


def default_name(entries: list[Entry]) -> str:
    """``amazon<release>-<category lowercased>`` for one category; merges must be named."""
    if len(entries) != 1:
        raise PrepError("--name is required when merging several categories")
    return f"amazon{entries[0].release.name}-{entries[0].category.lower()}"


def locate(entry: Entry, relative: str, inputs: list[Path]) -> Path:
    """Find a published file in ``DIR/<release>/`` or ``DIR/`` of each input, gzipped or not."""
    found = _find(relative, entry.release.name, inputs)
    if found is not None:
        return found
    name, other = _names_of(relative)
    searched = ", ".join(str(d) + _folder_note(d) for d in inputs)
    hint = f"get it with `srt-prep download --release {entry.release.name} --category {entry.category}`"
    misplaced = _find(relative, entry.release.name, inputs, Path.is_dir)
    if misplaced is not None:
        hint = f"{misplaced} is a folder, not the file"
    if relative == entry.interactions_path:
        for source, published in entry.release.sources.items():
            there = _find(published.path.format(cat=entry.category), entry.release.name, inputs)
            if source != entry.source and there is not None:
                hint = (
                    f"{there} is there: that is the {source!r} file; read it with --source {source} "
                    f"(or --category {entry.release.name}:{entry.category}:{source})"
                )
                break
    raise PrepError(f"{entry.label}: file {name} (or {other}) not found in {searched}; {hint}")


def _folder_note(path: Path) -> str:
    return "" if path.is_dir() else " (not a folder)" if path.exists() else " (no such folder)"


def _names_of(relative: str) -> tuple[str, str]:
    """The published file name and its gzipped (or plain) twin."""
    name = file_name(relative)
    return name, name[:-3] if name.endswith(".gz") else name + ".gz"


def _find(
    relative: str, release: str, inputs: list[Path], test: Callable[[Path], bool] = Path.is_file
) -> Path | None:
    """The first ``DIR/<release>/NAME`` or ``DIR/NAME`` (either twin) for which ``test`` holds."""
    for base in inputs:
        for folder in (base / release, base):
            for candidate in _names_of(relative):
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
    target = dataset_folder(opts.output, opts.name)
    files = [
        (e, locate(e, e.interactions_path, opts.inputs), locate(e, e.meta_path, opts.inputs))
        for e in opts.entries
    ]
    for path in opts.exclude_users_of:
        if not path.is_file():
            what = "is not a file" if path.exists() else "file not found"
            raise PrepError(f"{what} (--exclude-users-of expects a RecBole .inter file)", path)
    fingerprint = _fingerprint(opts, [p for _, i, m in files for p in (i, m)])
    with Staging(target) as stage:
        previous = read_report(target)
        if not opts.force and previous and previous.get("fingerprint") == fingerprint and unchanged(target):
            return {**previous, "up_to_date": True}
        result = _convert(opts, files, fingerprint, stage)
        stage.commit()
    return result


def _convert(
    opts: ConvertOptions, files: list[tuple[Entry, Path, Path]], fingerprint: str, stage: Staging
) -> dict:
    """Read, filter and write every output file into ``stage``; the report."""
    report = Report()
    multi_release = len({entry.release.name for entry in opts.entries}) > 1
    inter = Interactions()
    input_stats = []
    segments: list[tuple[int, int]] = []  # each file's rows in the interactions
    for entry, path, _ in files:
        stats = FileStats(str(path))
        times = TimeCheck(
            str(path), entry.release.name, unit_of(entry.layout.time_divisor), opts.timestamp_unit
        )
        first = end = segments[-1][1] if segments else 0
        dropped = 0
        for chunk in prefetched(read_interactions(path, entry.layout, stats)):
            chunk.ts, ok = times.seconds(chunk.ts)
            if opts.odd_timestamps == "drop" and not ok.all():
                dropped += int((~ok).sum())
                chunk = chunk.where(ok)
            inter.add(chunk, _item_prefix(entry, multi_release))
            end += len(chunk.rating)
        if opts.odd_timestamps == "stop":
            times.stop()
        elif dropped:
            report.warn(f"{path}: {times.dropped_note()}")
        segments.append((first, end))
        _warn_about(stats, report)
        input_stats.append({"entry": entry.label, **asdict(stats), "timestamps": times.record(dropped)})
    inter.freeze()

    with ThreadPoolExecutor(1) as pool:
        # Sorted in the background (numpy sorts release the GIL) while the metadata is read.
        sorting = pool.submit(filters.user_time_order, inter.user, inter.ts)
        spool = stage.scratch("items.spool")
        meta = _spool_metadata(files, inter, multi_release, opts, spool, report)
        _check_columns(files, segments, inter, meta)
        order = sorting.result()
    keep, counts = _filter(inter, meta, input_stats, opts, report, order)
    kept_items = np.bincount(inter.item[keep], minlength=len(inter.items)) > 0
    write_tsv(stage.path(f"{opts.name}.inter"), INTER_HEADER, _inter_batches(inter, order[keep[order]]))
    _write_items(stage.path(f"{opts.name}.item"), spool, kept_items, meta.has_meta, inter.items.tokens)
    write_yaml(
        stage.path(f"{opts.name}.yaml"),
        dataset_config(opts.output, _names(INTER_HEADER), _names(ITEM_HEADER), opts.max_seq_len),
    )
    counts["items"].update(
        kept_without_metadata=int((kept_items & ~meta.has_meta).sum()),
        kept_without_text=int((kept_items & meta.has_meta & ~meta.has_text).sum()),
    )
    result = {
        "name": opts.name,
        "fingerprint": fingerprint,
        "rows": {
            "read": sum(s["lines"] + s["partial_lines"] for s in input_stats),
            "kept": int(keep.sum()),
        },
        "dropped": report.dropped,
        **counts,
        "inputs": input_stats,
        "metadata": meta.records,
        "options": _options_record(opts),
        "warnings": report.warnings,
    }
    write_json(stage.path("report.json"), result)
    return result


def _filter(
    inter: Interactions,
    meta: Metadata,
    input_stats: list[dict],
    opts: ConvertOptions,
    report: Report,
    order: np.ndarray,
) -> tuple[np.ndarray, dict]:
    """Apply every filter in order, counting drops in ``report``; the keep mask and user/item counts.
    A filter that leaves no row stops the conversion with a message naming it."""
    n_users, n_items = len(inter.users), len(inter.items)
    keep = np.ones(len(inter), bool)
    drops = report.dropped

    def check(cause: Callable[[], str]) -> None:
        if not keep.any():
            raise PrepError(
                f"no interaction left after filtering: {cause()} dropped the last rows; "
                f"rows dropped by reason: {json.dumps({k: v for k, v in drops.items() if v})}"
            )

    drops["malformed_line"] = sum(s["malformed"] for s in input_stats)
    drops["malformed_line"] += filters.by_code(inter.user, keep, inter.users.invalid_mask())
    drops["malformed_line"] += filters.by_code(inter.item, keep, inter.items.invalid_mask())
    drops["truncated_stream"] = sum(s["partial_lines"] for s in input_stats)
    drops["odd_timestamp"] = sum(s["timestamps"]["dropped"] for s in input_stats)
    check(lambda: "skipping ids that cannot be RecBole tokens")
    seen_users = np.bincount(inter.user[keep], minlength=n_users) > 0
    seen_items = np.bincount(inter.item[keep], minlength=n_items) > 0
    span = f"{_day(inter.ts[keep].min())} to {_day(inter.ts[keep].max())}"
    drops["time_range"] = filters.time_range(inter.ts, keep, opts.start, opts.end)
    check(lambda: f"--start {_day(opts.start)} / --end {_day(opts.end)} (the data spans {span})")
    ratings = f"{inter.rating[keep].min():g} to {inter.rating[keep].max():g}"
    drops["rating_threshold"] = filters.min_rating(inter.rating, keep, opts.min_rating)
    check(lambda: f"--min-rating {opts.min_rating:g} (ratings here range from {ratings})")
    if opts.missing_meta == "drop":
        drops["missing_metadata"] = filters.by_code(inter.item, keep, ~meta.has_meta)
        check(lambda: "--missing-meta drop (no interacted item has a metadata record; wrong metadata file?)")
    if opts.missing_text == "drop":
        drops["missing_text"] = filters.by_code(inter.item, keep, meta.has_meta & ~meta.has_text)
        check(lambda: "--missing-text drop")
    excluded = _excluded_users(opts.exclude_users_of, inter)
    drops["excluded_user"] = filters.by_code(inter.user, keep, excluded)
    check(lambda: "--exclude-users-of (every user is in the excluded files)")
    drops["duplicate"] = filters.duplicates(inter.user, inter.item, keep, order, opts.dedup)
    most = (np.bincount(inter.user[keep]).max(), np.bincount(inter.item[keep]).max())
    drops["k_core"] = filters.k_core(
        inter.user, inter.item, keep, (n_users, n_items), opts.min_user_inter, opts.min_item_inter
    )
    check(
        lambda: (
            f"the iterative k-core (--min-user-inter {opts.min_user_inter}, --min-item-inter "
            f"{opts.min_item_inter}; before it the most active user had {most[0]} interactions and the most "
            f"popular item {most[1]}; lower the thresholds or add data)"
        )
    )
    counts = {
        "users": {
            "before": int(seen_users.sum()),
            "after": _distinct(inter.user[keep], n_users),
            "excluded": int((seen_users & excluded).sum()),
        },
        "items": {
            "before": int(seen_items.sum()),
            "after": _distinct(inter.item[keep], n_items),
            "missing_metadata": int((seen_items & ~meta.has_meta).sum()),
            "missing_text": int((seen_items & meta.has_meta & ~meta.has_text).sum()),
        },
    }
    return keep, counts


def _day(seconds: float | None) -> str:
    """A time as an ISO date (time of day when not midnight), "none" for no bound."""
    if seconds is None:
        return "none"
    moment = datetime.fromtimestamp(float(seconds), UTC)
    return moment.strftime("%Y-%m-%d" if moment.time() == datetime.min.time() else "%Y-%m-%dT%H:%M:%S")


def _check_columns(
    files: list[tuple[Entry, Path, Path]],
    segments: list[tuple[int, int]],
    inter: Interactions,
    meta: Metadata,
) -> None:
    """Stop when a ratings CSV's user column holds item asins (matches metadata keys) far more often than
    its item column: the file has its first two columns swapped."""
    n_users, n_items = len(inter.users), len(inter.items)
    for (entry, path, meta_path), (lo, hi) in zip(files, segments, strict=True):
        if not isinstance(entry.layout, CsvLayout) or lo == hi:
            continue
        users = np.bincount(inter.user[lo:hi], minlength=n_users) > 0
        items = np.bincount(inter.item[lo:hi], minlength=n_items) > 0
        user_hits, item_hits = int((users & meta.user_is_item_key).sum()), int((items & meta.has_meta).sum())
        user_share, item_share = user_hits / users.sum(), item_hits / items.sum()
        if user_share >= SWAP_MIN_SHARE and user_share >= SWAP_RATIO * item_share:
            order = ["?"] * 4
            order[entry.layout.user_col], order[entry.layout.item_col] = "user", "item"
            order[entry.layout.rating_col], order[entry.layout.time_col] = "rating", "timestamp"
            swapped = [{"user": "item", "item": "user"}.get(c, c) for c in order]
            raise PrepError(
                f"user and item columns look swapped: {user_hits:,} of {int(users.sum()):,} ids in the user "
                f"column are asins of {meta_path.name}, against {item_hits:,} of {int(items.sum()):,} in "
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


def _distinct(codes: np.ndarray, size: int) -> int:
    return int((np.bincount(codes, minlength=size) > 0).sum())


def _warn_about(stats: FileStats, report: Report) -> None:
    if stats.truncated:
        report.warn(f"{stats.path}: stream is truncated; kept the {stats.lines} complete lines")
    if stats.malformed:
        report.warn(f"{stats.path}: skipped {stats.malformed} malformed lines, e.g. {stats.examples[0]}")
    if stats.non_utf8:
        report.warn(f"{stats.path}: {stats.non_utf8} lines had non-UTF-8 bytes (replaced by U+FFFD)")


@dataclass
class Metadata:
    """Per item code: has a metadata record / has any text; per user code: is a metadata key (a sign of
    swapped columns); plus each metadata file's counts."""

    has_meta: np.ndarray
    has_text: np.ndarray
    user_is_item_key: np.ndarray
    records: list[dict]


def _spool_metadata(
    files: list[tuple[Entry, Path, Path]],
    inter: Interactions,
    multi_release: bool,
    opts: ConvertOptions,
    spool: Path,
    report: Report,
) -> Metadata:
    """Stream every metadata file; write ``code<TAB>text fields`` of each needed item (first record wins)."""
    has_meta = np.zeros(len(inter.items), bool)
    has_text = np.zeros(len(inter.items), bool)
    user_is_item_key = np.zeros(len(inter.users), bool)
    records = []
    codes, user_codes = inter.items.codes, inter.users.codes

    def needed(key: str, prefix: str) -> bool:
        if prefix + key in codes:
            return True
        user = user_codes.get(key)
        if user is not None:
            user_is_item_key[user] = True
        return False

    with open(spool, "w", encoding="utf-8") as out:
        for entry, _, path in files:
            prefix = _item_prefix(entry, multi_release)
            stats = MetaStats(str(path))
            duplicates = 0
            for key, text in read_meta(
                path, entry.release.meta_layout, lambda k, p=prefix: needed(k, p), stats, opts.max_text_len
            ):
                code = codes[prefix + key]
                if has_meta[code]:
                    duplicates += 1
                    continue
                has_meta[code] = True
                has_text[code] = not text.is_empty()
                out.write(f"{code}\t{text.title}\t{text.brand}\t{text.categories}\t{text.description}\n")
            _warn_about(stats, report)
            records.append({"entry": entry.label, **asdict(stats), "duplicate_records": duplicates})
    return Metadata(has_meta, has_text, user_is_item_key, records)


def _excluded_users(paths: list[Path], inter: Interactions) -> np.ndarray:
    """Boolean array over user codes: users that appear in any of the given ``.inter`` files."""
    excluded = np.zeros(len(inter.users), bool)
    for path in paths:
        for token in _inter_users(path):
            code = inter.users.codes.get(token)
            if code is not None:
                excluded[code] = True
    return excluded


def _inter_users(path: Path) -> Iterator[str]:
    """The ``user_id`` column of a RecBole ``.inter`` file."""
    column = None
    for block in LineBlocks(path):
        for line in block.data.decode("utf-8", errors="replace").splitlines():
            cells = line.split("\t")
            if column is None:
                names = [c.split(":")[0] for c in cells]
                if "user_id" not in names:
                    raise PrepError("no user_id column in the header of this .inter file", path, 1)
                column = names.index("user_id")
            elif len(cells) > column:
                yield cells[column]


def _inter_batches(inter: Interactions, order: np.ndarray) -> Iterator[pa.RecordBatch]:
    """Rows ``order`` as arrow batches of tokens; integral numbers are written as integers."""
    user_tokens = pa.array(inter.users.tokens, pa.string())
    item_tokens = pa.array(inter.items.tokens, pa.string())
    for start in range(0, len(order), WRITE_BATCH):
        take = order[start : start + WRITE_BATCH]
        yield pa.record_batch(
            [
                user_tokens.take(pa.array(inter.user[take])),
                item_tokens.take(pa.array(inter.item[take])),
                _number_column(inter.rating[take]),
                _number_column(inter.ts[take]),
            ],
            names=["user_id", "item_id", "rating", "timestamp"],
        )


def _number_column(values: np.ndarray) -> pa.Array:
    """Integers when every value is integral (same text, faster to format), else the floats."""
    as_int = values.astype(np.int64)
    return pa.array(as_int if np.array_equal(as_int, values) else values)


def _write_items(path: Path, spool: Path, kept: np.ndarray, has_meta: np.ndarray, tokens: list[str]) -> None:
    """``NAME.item``: spooled rows of kept items, then empty rows for kept items without metadata."""
    with open(path, "w", encoding="utf-8") as out, open(spool, encoding="utf-8") as rows:
        out.write("\t".join(ITEM_HEADER) + "\n")
        for row in rows:
            code, text = row.split("\t", 1)
            if kept[int(code)]:
                out.write(f"{tokens[int(code)]}\t{text}")
        for code in np.flatnonzero(kept & ~has_meta):
            out.write(tokens[code] + "\t" * (len(ITEM_HEADER) - 1) + "\n")


def _options_record(opts: ConvertOptions) -> dict:
    record = asdict(opts)
    record["entries"] = [e.label for e in opts.entries]
    for key in ("inputs", "exclude_users_of"):
        record[key] = [str(Path(p).resolve()) for p in record[key]]
    record["output"] = str(Path(opts.output).resolve())
    del record["force"]
    return record


def _fingerprint(opts: ConvertOptions, paths: list[Path]) -> str:
    """Hash of the options and of each input file's path, size and modification time."""
    files = [*paths, *opts.exclude_users_of]
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    payload = json.dumps([FORMAT_VERSION, _options_record(opts), stats], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
