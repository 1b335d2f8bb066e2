"""``srt-prep`` (also ``python -m dataset_prep``): list, download, convert, import-unisrec, merge."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

from dataset_prep import registry
from dataset_prep.engine import MEMORY_LIMIT
from dataset_prep.errors import DEBUG_ENV, PrepError, debug_requested
from dataset_prep.filters import DEDUP_POLICIES, MISSING_POLICIES
from dataset_prep.streams import text_lines
from dataset_prep.timestamps import ODD_POLICIES, UNITS

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")  # inside a message from elsewhere (urllib, DuckDB, ...)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 unusable input or environment, 1 internal error).

    Every failure is one ``srt-prep: error: ...`` line on stderr; ``--debug`` or ``SRT_DEBUG=1`` shows the
    traceback instead."""
    args = build_parser().parse_args(argv)
    debug = args.debug or debug_requested()
    try:
        return args.run(args)
    except (Exception, KeyboardInterrupt) as err:  # each kind becomes one line unless debugging
        if debug:
            raise
        message, status = _describe(err)
    print(f"srt-prep: error: {_LINE_BREAKS.sub(' ', message.strip())}", file=sys.stderr)  # always one line
    return status


def _describe(err: Exception | KeyboardInterrupt) -> tuple[str, int]:
    """The one-line message and exit status of an error."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted; nothing was replaced (rerun to resume or redo)", EXIT_INTERRUPTED
    if isinstance(err, PrepError):
        return str(err), EXIT_BAD_INPUT
    if isinstance(err, OSError):  # permissions, disk full, a file where a folder is expected, ...
        where = ": ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        return f"{where + ': ' if where else ''}{err.strerror or err}", EXIT_BAD_INPUT
    return (
        f"internal error {type(err).__name__}: {err} (please report it; rerun with --debug or "
        f"{DEBUG_ENV}=1 for the traceback)",
        EXIT_INTERNAL,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its four subcommands."""
    parser = argparse.ArgumentParser(
        prog="srt-prep",
        description="Amazon review categories (2014/2018/2023) -> RecBole atomic files. Unusable input "
        "stops with one 'srt-prep: error: ...' line and exit status 2.",
    )
    debug_help = f"show the Python traceback of an error (also {DEBUG_ENV}=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # Also accepted after the subcommand; SUPPRESS keeps the top-level value when it is not repeated there.
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser(
        "list", parents=[flags], help="print every release/category with its file names"
    )
    listing.add_argument(
        "--release", action="append", choices=list(registry.RELEASES), help="only this release"
    )
    listing.add_argument("--urls", action="store_true", help="show full metadata URLs and base URLs")
    listing.set_defaults(run=_run_list)

    download = commands.add_parser(
        "download",
        parents=[flags],
        help="download category files (resumable; length and format verified; size and sha256 recorded "
        "in OUTPUT/<release>/downloads.json)",
    )
    _add_selection(download)
    download.add_argument("--output", type=Path, required=True, help="folder; files go to OUTPUT/<release>/")
    download.add_argument("--no-meta", action="store_true", help="skip the metadata file")
    download.add_argument("--base-url", help="mirror to use instead of the release's URL (same layout)")
    download.add_argument(
        "--timeout",
        type=_positive(float),
        default=60.0,
        help="seconds per network operation (default 60), and the window of the stall check: an answer not "
        "complete within it, or a body bringing less than 1 KiB/s over it, stops the download (a .part is "
        "kept to resume)",
    )
    download.set_defaults(run=_run_download)

    convert = commands.add_parser(
        "convert", parents=[flags], help="convert (and merge) categories to RecBole atomic files"
    )
    _add_selection(convert)
    convert.add_argument(
        "--input",
        type=Path,
        action="append",
        required=True,
        help="folder with the published files (or INPUT/<release>/); repeatable",
    )
    convert.add_argument(
        "--output",
        type=Path,
        required=True,
        help="writes OUTPUT/NAME/NAME.{inter,item,yaml}, report.json and manifest.json (the whole folder "
        "is replaced at once)",
    )
    convert.add_argument("--name", help="dataset name (default amazon<release>-<category lowercased>)")
    convert.add_argument(
        "--min-user-inter", type=_count, default=5, help="iterative k-core: users (default 5)"
    )
    convert.add_argument(
        "--min-item-inter", type=_count, default=5, help="iterative k-core: items (default 5)"
    )
    convert.add_argument("--min-rating", type=float, help="keep ratings >= this")
    convert.add_argument(
        "--dedup",
        choices=DEDUP_POLICIES,
        default="first",
        help="repeated (user, item): keep the earliest, the latest, or all (default first)",
    )
    convert.add_argument(
        "--start", type=_timestamp, help="keep interactions at or after (ISO date or unix s)"
    )
    convert.add_argument("--end", type=_timestamp, help="keep interactions before (ISO date or unix s)")
    convert.add_argument(
        "--timestamp-unit",
        choices=UNITS,
        default="release",
        help="unit of the files' timestamps: 'release' (default) is the release's documented unit "
        "(2014/2018 seconds, 2023 milliseconds); 's' or 'ms' for every file; 'auto' reads each value in "
        "the unit its size implies (>= 1e11 is ms), for files mixing both. A value that is no time "
        "between 1994 and tomorrow stops the conversion, naming the file",
    )
    convert.add_argument(
        "--odd-timestamps",
        choices=ODD_POLICIES,
        default="stop",
        help="rows whose timestamp is implausible in that unit: stop with a message (default) or drop "
        "them (counted as odd_timestamp in report.json)",
    )
    convert.add_argument(
        "--missing-meta",
        choices=MISSING_POLICIES,
        default="drop",
        help="interactions with items that have no metadata record (default drop)",
    )
    convert.add_argument(
        "--missing-text",
        choices=MISSING_POLICIES,
        default="keep",
        help="interactions with items whose metadata has no text (default keep)",
    )
    convert.add_argument(
        "--max-text-len", type=_positive(int), default=1000, help="characters per text field"
    )
    convert.add_argument(
        "--exclude-users-of",
        type=Path,
        action="append",
        default=[],
        metavar="INTER_FILE",
        help="leakage guard: drop users present in this .inter file; repeatable",
    )
    _add_max_seq_len(convert)
    convert.add_argument(
        "--memory-limit",
        default=MEMORY_LIMIT,
        metavar="SIZE",
        help=f"memory for the engine that sorts, de-duplicates and filters, e.g. 4GB or 512MB (default "
        f"{MEMORY_LIMIT}); beyond it the engine spills to --temp-dir, so any input size fits",
    )
    convert.add_argument(
        "--temp-dir",
        type=Path,
        help="folder for the engine's spill files, removed when done (default: beside the output, in "
        "OUTPUT/.NAME.staging/)",
    )
    convert.add_argument("--force", action="store_true", help="convert even if the output is up to date")
    convert.set_defaults(run=_run_convert)

    unisrec = commands.add_parser(
        "import-unisrec", parents=[flags], help="UniSRec/VQ-Rec pre-split files -> atomic files"
    )
    unisrec.add_argument(
        "--input", type=Path, required=True, help="folder with <Prefix>.{train,valid,test}.inter"
    )
    unisrec.add_argument("--name", required=True, help="dataset name, e.g. scientific")
    unisrec.add_argument(
        "--output", type=Path, required=True, help="writes OUTPUT/NAME/NAME.{inter,item,yaml}"
    )
    unisrec.add_argument("--prefix", help="file prefix, e.g. Scientific (default: the only one in INPUT)")
    _add_max_seq_len(unisrec)
    unisrec.set_defaults(run=_run_unisrec)

    merge = commands.add_parser(
        "merge", parents=[flags], help="RecBole atomic datasets -> one multi-domain pre-training corpus"
    )
    merge.add_argument(
        "--dataset",
        action="append",
        required=True,
        type=_source,
        metavar="NAME=FOLDER",
        help="a source: FOLDER holds NAME.inter, NAME.item (and NAME.yaml); repeatable",
    )
    merge.add_argument("--output", type=Path, required=True, help="writes OUTPUT/NAME/NAME.{inter,item,yaml}")
    merge.add_argument("--name", required=True, help="corpus name, e.g. corpus")
    merge.add_argument(
        "--exclude-users-of",
        type=Path,
        action="append",
        default=[],
        metavar="INTER_FILE",
        help="leakage guard: drop the users of this .inter file from the --guard sources; repeatable",
    )
    merge.add_argument(
        "--guard",
        action="append",
        default=[],
        metavar="NAME",
        help="a source whose user ids are the excluded files' (e.g. Amazon reviewer ids); repeatable",
    )
    _add_max_seq_len(merge)
    merge.set_defaults(run=_run_merge)
    return parser


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--release", choices=list(registry.RELEASES), help="release of bare category names")
    parser.add_argument(
        "--category",
        action="append",
        default=[],
        metavar="[RELEASE:]CATEGORY[:SOURCE]",
        help="category to use; repeat to merge several",
    )
    parser.add_argument("--spec", type=Path, help="file listing RELEASE:CATEGORY[:SOURCE] lines (# comments)")
    parser.add_argument("--source", help="ratings | 5core | reviews (default ratings; 2023: reviews)")


def _add_max_seq_len(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-seq-len", type=_positive(int), default=50, help="MAX_ITEM_LIST_LENGTH in the YAML"
    )


def _entries(args: argparse.Namespace) -> list[registry.Entry]:
    specs = list(args.category)
    if args.spec is not None:
        specs += [spec for _, line in text_lines(args.spec) if (spec := line.split("#")[0].strip())]
    if not specs:
        raise PrepError("no category given: use --category (repeatable) or --spec")
    entries = [registry.parse_entry(spec, args.release, args.source) for spec in specs]
    return list({entry.label: entry for entry in entries}.values())


def _positive(kind: type[int] | type[float], zero: bool = False) -> Callable[[str], int | float]:
    """An argparse type: a finite number of ``kind`` greater than 0 (or equal to 0, with ``zero``)."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not (value >= 0 if zero else value > 0) or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if zero else 'greater than 0'}: {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


_count = _positive(int, zero=True)  # an integer >= 0


def _source(text: str) -> tuple[str, Path]:
    """An argparse type: ``NAME=FOLDER``."""
    name, equals, folder = text.partition("=")
    if not (name and equals and folder):
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, got {text!r}")
    return name, Path(folder)


def _timestamp(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an ISO date or unix seconds: {text!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite time: {text!r}")
    return value


def _run_list(args: argparse.Namespace) -> int:
    print(registry.table(args.release, urls=args.urls))
    return 0


def _run_download(args: argparse.Namespace) -> int:
    from dataset_prep.download import download_entry

    for entry in _entries(args):
        for path in download_entry(entry, args.output, args.base_url, not args.no_meta, args.timeout):
            print(path)
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    from dataset_prep.convert import ConvertOptions, convert, default_name

    entries = _entries(args)
    # Every other field of ConvertOptions is the CLI option of the same name.
    same = [f.name for f in fields(ConvertOptions) if f.name not in ("entries", "inputs", "name")]
    opts = ConvertOptions(
        entries=entries,
        inputs=args.input,
        name=args.name or default_name(entries),
        **{key: getattr(args, key) for key in same},
    )
    report = convert(opts)
    folder = args.output / opts.name
    if report.get("up_to_date"):
        print(f"{folder}: up to date (same inputs and options), nothing written")
        return 0
    summary = {key: report[key] for key in ("rows", "dropped", "users", "items")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {folder}/{opts.name}.inter, .item, .yaml, report.json and manifest.json")
    print(f"train: run_recbole --model=SRT --dataset={opts.name} --config_files={folder}/{opts.name}.yaml")
    return 0


def _run_unisrec(args: argparse.Namespace) -> int:
    from dataset_prep.unisrec import import_unisrec

    report = import_unisrec(args.input, args.name, args.output, args.prefix, args.max_seq_len)
    print(json.dumps(report, indent=2))
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    from dataset_prep.merge import merge

    report = merge(args.dataset, args.output, args.name, args.exclude_users_of, args.guard, args.max_seq_len)
    print(json.dumps(report, indent=2))
    folder = args.output / args.name
    print(f"train: run_recbole --model=SRT --dataset={args.name} --config_files={folder}/{args.name}.yaml")
    return 0
