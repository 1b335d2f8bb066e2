"""convert on broken inputs derived from real data: each gets one error line, exit 2, no partial output, and
a previous good output stays as it was.

The real data is the Magazine and Digital_Music slices in tests/data; the tests whose expected counts are
recomputed from the raw files also run on the full data named by $RECBOLE_SRT_TEST_DATA (the ``magazine``
fixture of conftest)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import SLICES

from dataset_prep import convert as convert_module
from dataset_prep.atomic import Staging
from dataset_prep.cli import main
from dataset_prep.errors import PrepError

REPO = Path(__file__).parents[1]
MAGAZINE = SLICES / "amazon2018-magazine-subscriptions"  # the slice, for tests that need real files only
MUSIC = SLICES / "amazon2014-digital-music-truncated"
FIXTURES = Path(__file__).parent / "fixtures" / "prep"
CSV_NAME = "Magazine_Subscriptions.csv"
META_NAME = "meta_Magazine_Subscriptions.json.gz"
NAME = "mag"


@pytest.fixture
def rows(magazine: Path) -> list[list[bytes]]:
    """The real 2018 Magazine ratings of ``magazine`` (item,user,rating,timestamp), one list of cells per
    line; every timestamp a plausible time in seconds, so the derived inputs below break just the rows they
    change."""
    text = gzip.decompress((magazine / f"{CSV_NAME}.gz").read_bytes())
    cells = [line.split(b",") for line in text.splitlines()]
    assert cells and all(757382400 <= int(c[3]) <= time.time() for c in cells)  # 1994-01-01 to now
    return cells


def meta_asins(magazine: Path) -> set[bytes]:
    """The asins that have a metadata record in ``magazine`` (the test's own reader)."""
    with gzip.open(magazine / META_NAME, "rt", encoding="utf-8") as f:
        return {json.loads(line)["asin"].encode() for line in f}


def day(seconds: int) -> str:
    """A time as convert shows a bound of the data's span: the date, and the time of day unless midnight."""
    moment = datetime.fromtimestamp(seconds, UTC)
    midnight = moment.hour == moment.minute == moment.second == 0
    return moment.strftime("%Y-%m-%d" if midnight else "%Y-%m-%dT%H:%M:%S")


def magazine_input(folder: Path, rows: list[list[bytes]], magazine: Path = MAGAZINE) -> Path:
    """``folder`` with a derived ratings CSV and the real metadata (a link to ``magazine``'s file)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CSV_NAME).write_bytes(b"".join(b",".join(cells) + b"\n" for cells in rows))
    (folder / META_NAME).symlink_to(magazine / META_NAME)
    return folder


def convert(capsys, source: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    """``srt-prep convert`` of 2018:Magazine_Subscriptions (a 2-core unless ``extra`` says otherwise); status,
    stdout, the error line (or "")."""
    args = ["convert", "--category", "2018:Magazine_Subscriptions", "--input", str(source)]
    status = main([*args, "--output", str(out), "--name", NAME, *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("srt-prep: error:")]
    assert len(errors) == (status != 0)
    return status, captured.out, errors[0].removeprefix("srt-prep: error: ") if errors else ""


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: sha256 and modification time."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def good(tmp_path: Path, capsys) -> Path:
    """A first, good conversion of the Magazine slice into tmp_path/out/mag; returns tmp_path/out."""
    out = tmp_path / "out"
    assert convert(capsys, MAGAZINE, out)[0] == 0
    return out


@pytest.fixture
def magazine_good(tmp_path: Path, capsys, magazine: Path) -> Path:
    """A first, good conversion of ``magazine`` (the slice, then the full data) into tmp_path/out."""
    out = tmp_path / "out"
    assert convert(capsys, magazine, out)[0] == 0
    return out


def assert_refused(capsys, source: Path, out: Path, *extra: str) -> str:
    """The conversion fails with exit 2, leaves the previous output exactly as it was and nothing hidden."""
    before = snapshot(out)
    status, _, message = convert(capsys, source, out, *extra)
    assert status == 2
    assert snapshot(out) == before
    assert [p.name for p in out.iterdir()] == [NAME]  # no staging folder, lock or old folder left
    return message


def with_time(rows: list[list[bytes]], new_time) -> list[list[bytes]]:
    return [[*cells[:3], new_time(i, cells[3])] for i, cells in enumerate(rows)]


# --- 1. timestamps ---------------------------------------------------------------------------------


def test_milliseconds_in_a_seconds_release(
    tmp_path: Path, capsys, magazine: Path, magazine_good: Path, rows
) -> None:
    good = magazine_good
    source = magazine_input(tmp_path / "ms", with_time(rows, lambda i, t: t + b"000"), magazine)
    message = assert_refused(capsys, source, good)
    first = int(rows[0][3])  # the example: the first value, every one of them in the other unit
    assert message == (
        f"{source / CSV_NAME}: timestamps are in milliseconds, but release 2018 publishes seconds (e.g. "
        f"{first}000 is {day(first)[:10]} in milliseconds, beyond the year 9999 in seconds): if the file is "
        "right, pass --timestamp-unit ms"
    )
    out = tmp_path / "fixed"
    assert convert(capsys, source, out, "--timestamp-unit", "ms")[0] == 0
    assert (out / NAME / f"{NAME}.inter").read_bytes() == (good / NAME / f"{NAME}.inter").read_bytes()


def test_file_mixing_seconds_and_milliseconds(
    tmp_path: Path, capsys, magazine: Path, magazine_good: Path, rows
) -> None:
    good = magazine_good
    mixed = with_time(rows, lambda i, t: t + b"000" if i % 2 else t)
    source = magazine_input(tmp_path / "mixed", mixed, magazine)
    message = assert_refused(capsys, source, good)
    seconds, millis = len(rows[::2]), len(rows[1::2])  # 44,845 and 44,844 in the full file
    assert message == (
        f"{source / CSV_NAME}: timestamps mix seconds and milliseconds ({seconds:,} are seconds, e.g. "
        f"{int(mixed[0][3])}; {millis:,} are milliseconds, e.g. {int(mixed[1][3])}), which would reorder "
        "users' sequences: pass --timestamp-unit auto to read each value in the unit its size implies"
    )
    out = tmp_path / "fixed"
    status, _, _ = convert(capsys, source, out, "--timestamp-unit", "auto")
    assert status == 0  # each value in its own unit: the very same sequences as the clean file
    assert (out / NAME / f"{NAME}.inter").read_bytes() == (good / NAME / f"{NAME}.inter").read_bytes()


@pytest.mark.parametrize(
    ("bad", "shown"),
    [(lambda t: b"-" + t, "-{first}"), (lambda t: b"4102444800", "4102444800"), (lambda t: b"0", "0")],
    ids=["negative", "year-2100", "zero"],
)
def test_impossible_timestamps(
    tmp_path: Path, capsys, magazine: Path, magazine_good: Path, rows, bad, shown: str
) -> None:
    good = magazine_good
    odd = with_time(rows, lambda i, t: bad(t) if i % 1000 == 0 else t)
    source = magazine_input(tmp_path / "odd", odd, magazine)
    message = assert_refused(capsys, source, good)
    total, broken = len(rows), len(rows[::1000])  # 89,689 and 90 in the full file
    assert message.startswith(
        f"{source / CSV_NAME}: {broken:,} of {total:,} timestamps are no time between 1994 and "
    )
    shown = shown.format(first=int(rows[0][3]))  # the first odd value: row 0's
    assert message.endswith(f" in seconds (e.g. {shown}): pass --odd-timestamps drop to drop those rows")
    out = tmp_path / "dropped"
    assert convert(capsys, source, out, "--odd-timestamps", "drop")[0] == 0
    report = json.loads((out / NAME / "report.json").read_text())
    assert report["dropped"]["odd_timestamp"] == broken
    assert report["inputs"][0]["timestamps"] == {
        "unit": "s",
        "plausible": total - broken,
        "other_unit": 0,
        "implausible": broken,
        "dropped": broken,
    }
    assert any(f"dropped {broken:,} rows with odd timestamps" in w for w in report["warnings"])


def test_seconds_in_the_2023_release(tmp_path: Path, capsys) -> None:
    lines = (FIXTURES / "2023" / "All_Beauty.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        record["timestamp"] = record["timestamp"] / 1000
    src = tmp_path / "in" / "2023"
    src.mkdir(parents=True)
    (src / "All_Beauty.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (src / "meta_All_Beauty.jsonl").symlink_to(FIXTURES / "2023" / "meta_All_Beauty.jsonl")
    args = ["convert", "--category", "2023:All_Beauty", "--name", "b"]
    args += ["--min-user-inter", "1", "--min-item-inter", "1"]
    assert main([*args, "--input", str(src.parent), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (
        f"srt-prep: error: {src / 'All_Beauty.jsonl'}: timestamps are in seconds, but release 2023 publishes "
        "milliseconds (e.g. 1600000000 is 2020-09-13 in seconds, 1970-01-19 in milliseconds): if the file "
        "is right, pass --timestamp-unit s\n"
    )
    assert not (tmp_path / "o" / "b").exists()
    assert (
        main([*args, "--input", str(src.parent), "--output", str(tmp_path / "o"), "--timestamp-unit", "s"])
        == 0
    )
    assert main([*args, "--output", str(tmp_path / "ref"), "--input", str(FIXTURES)]) == 0
    assert (tmp_path / "o" / "b" / "b.inter").read_bytes() == (
        tmp_path / "ref" / "b" / "b.inter"
    ).read_bytes()


# --- 2. swapped columns -----------------------------------------------------------------------------


@pytest.mark.parametrize("missing_meta", ["keep", "drop"])
def test_swapped_user_and_item_columns(
    tmp_path: Path, capsys, magazine: Path, magazine_good: Path, rows, missing_meta: str
) -> None:
    source = magazine_input(tmp_path / "swapped", [[c[1], c[0], c[2], c[3]] for c in rows], magazine)
    message = assert_refused(capsys, source, magazine_good, "--missing-meta", missing_meta)
    asins = meta_asins(magazine)
    items, users = {c[0] for c in rows}, {c[1] for c in rows}  # full file: 2,320 of 2,428; 0 of 72,098
    assert len(items & asins) > 0.9 * len(items) and not users & asins
    assert message == (
        f"{source / CSV_NAME}: user and item columns look swapped: {len(items & asins):,} of {len(items):,} "
        f"ids in the user column are asins of {META_NAME}, against 0 of {len(users):,} in the item column. "
        "Release 2018 ratings files are item,user,rating,timestamp; this one looks like "
        "user,item,rating,timestamp. Swap its first two columns, e.g. "
        "`awk -F, -v OFS=, '{print $2,$1,$3,$4}'` (zcat it first if gzipped)"
    )


# --- 4. atomic output, manifest, recovery -------------------------------------------------------------


KILLER = """
import os, signal, sys
import dataset_prep.atomic as atomic
real_rename = os.rename
def rename(src, dst):
    if str(src).endswith(".staging"):  # the second rename: die before it, like a kill -9
        os.kill(os.getpid(), signal.SIGKILL)
    real_rename(src, dst)
atomic.os.rename = rename
from dataset_prep.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_between_the_two_renames_is_recovered(tmp_path: Path, capsys, good: Path) -> None:
    before = snapshot(good / NAME)
    args = ["convert", "--category", "2018:Magazine_Subscriptions", "--input", str(MAGAZINE)]
    args += ["--output", str(good), "--name", NAME, "--min-rating", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILLER, *args], env=env, capture_output=True, cwd=tmp_path)
    assert killed.returncode == -9
    # What a kill leaves: the old folder renamed away, the complete new one not yet in place.
    assert sorted(p.name for p in good.iterdir()) == [".mag.lock", ".mag.old", ".mag.staging"]
    assert snapshot(good / ".mag.old") == before
    # The next run puts the previous output back, finds it up to date, and cleans up.
    status, out, _ = convert(capsys, MAGAZINE, good)
    assert status == 0 and "up to date" in out
    assert [p.name for p in good.iterdir()] == [NAME]
    assert snapshot(good / NAME) == before


def test_up_to_date_needs_every_file_as_written(tmp_path: Path, capsys, good: Path) -> None:
    folder = good / NAME
    item = folder / f"{NAME}.item"
    stat = item.stat()
    item.write_bytes(item.read_bytes().replace(b"Magazine", b"Magazina", 1))  # same size
    os.utime(item, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time
    status, out, _ = convert(capsys, MAGAZINE, good)
    assert status == 0 and "up to date" not in out
    assert b"Magazina" not in item.read_bytes()
    (folder / f"{NAME}.yaml").unlink()
    status, out, _ = convert(capsys, MAGAZINE, good)
    assert status == 0 and "up to date" not in out and (folder / f"{NAME}.yaml").is_file()
    status, out, _ = convert(capsys, MAGAZINE, good)
    assert status == 0 and "up to date" in out


def test_leftovers_of_killed_runs_are_cleaned_and_foreign_files_kept(
    tmp_path: Path, capsys, good: Path
) -> None:
    (good / ".mag.staging").mkdir()
    (good / ".mag.staging" / f"{NAME}.inter").write_text("half a file")
    (good / NAME / f".{NAME}.inter.tmp-12345").write_text("left by an older srt-prep")
    (good / NAME / f"{NAME}.srt-all-MiniLM-L6-v2.npy").write_bytes(b"feature cache")
    status, out, _ = convert(capsys, MAGAZINE, good, "--min-rating", "4")
    assert status == 0 and "up to date" not in out
    assert [p.name for p in good.iterdir()] == [NAME]
    names = sorted(p.name for p in (good / NAME).iterdir())
    assert names == [
        f"{NAME}.inter",
        f"{NAME}.item",
        f"{NAME}.srt-all-MiniLM-L6-v2.npy",
        f"{NAME}.yaml",
        "manifest.json",
        "report.json",
    ]
    assert (good / NAME / f"{NAME}.srt-all-MiniLM-L6-v2.npy").read_bytes() == b"feature cache"
    manifest = json.loads((good / NAME / "manifest.json").read_text())["files"]
    assert sorted(manifest) == [f"{NAME}.inter", f"{NAME}.item", f"{NAME}.yaml", "report.json"]
    for name, record in manifest.items():
        data = (good / NAME / name).read_bytes()
        assert record == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_run_in_progress_locks_the_folder(capsys, good: Path) -> None:
    before = snapshot(good / NAME)
    with Staging(good / NAME):
        status, _, message = convert(capsys, MAGAZINE, good, "--force")
    assert status == 2 and snapshot(good / NAME) == before and [p.name for p in good.iterdir()] == [NAME]
    assert message == (
        f"{good / NAME}: another srt-prep run is writing this folder (lock .{NAME}.lock); "
        "wait for it to finish"
    )


def test_disk_full_while_writing_keeps_the_previous_output(
    capsys, good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: Path, *args: object) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(convert_module, "_write_items", full)
    before = snapshot(good)
    status, _, message = convert(capsys, MAGAZINE, good, "--force")
    assert status == 2 and message == f"{good / '.mag.staging' / 'mag.item'}: No space left on device"
    assert snapshot(good) == before and [p.name for p in good.iterdir()] == [NAME]


# --- 5. one line instead of a traceback ---------------------------------------------------------------


class Counts:
    """What the refusals below report about a Magazine ratings file, computed here from the raw files."""

    def __init__(self, rows: list[list[bytes]], asins: set[bytes]) -> None:
        self.rows = len(rows)  # 89,689 in the full file
        ratings = [float(c[2]) for c in rows]
        self.ratings = f"{min(ratings):g} to {max(ratings):g}"  # 1 to 5
        times = [int(c[3]) for c in rows]
        self.span = f"{day(min(times))} to {day(max(times))}"  # 2001-10-26 to 2018-09-19
        with_meta = [(c[1], c[0]) for c in rows if c[0] in asins]
        pairs = set(with_meta)  # the first of each (user, item) pair stays
        self.most_user = max(Counter(u for u, _ in pairs).values())  # before the k-core: 54 and 1716
        self.most_item = max(Counter(i for _, i in pairs).values())
        # 4470, 1226 and 83993 in the full file
        drops = {"missing_metadata": len(rows) - len(with_meta), "duplicate": len(with_meta) - len(pairs)}
        self.k_core_drops = json.dumps({**{k: v for k, v in drops.items() if v}, "k_core": len(pairs)})


EMPTY = "no interaction left after filtering: "


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--min-rating", "6"],
            lambda n: (
                f"{EMPTY}--min-rating 6 (ratings here range from {n.ratings}) dropped the last rows; "
                f'rows dropped by reason: {{"rating_threshold": {n.rows}}}'
            ),
        ),
        (
            ["--end", "1990-01-01"],
            lambda n: (
                f"{EMPTY}--start none / --end 1990-01-01 (the data spans {n.span}) dropped the last "
                f'rows; rows dropped by reason: {{"time_range": {n.rows}}}'
            ),
        ),
        (
            ["--start", "1e20"],
            lambda n: (
                f"{EMPTY}--start beyond the year 9999 / --end none (the data spans {n.span}) dropped "
                f'the last rows; rows dropped by reason: {{"time_range": {n.rows}}}'
            ),
        ),
        (
            ["--min-user-inter", "100"],
            lambda n: (
                f"{EMPTY}the iterative k-core (--min-user-inter 100, --min-item-inter 5; before it the "
                f"most active user had {n.most_user} interactions and the most popular item "
                f"{n.most_item}; lower the thresholds or add data) dropped the last rows; rows dropped by "
                f"reason: {n.k_core_drops}"
            ),
        ),
    ],
    ids=["min-rating-6", "end-before-data", "start-past-9999", "k-core-empty"],
)
def test_options_that_leave_nothing(
    tmp_path: Path, capsys, magazine: Path, magazine_good: Path, rows, extra, message
) -> None:
    expected = message(Counts(rows, meta_asins(magazine)))
    assert assert_refused(capsys, magazine, magazine_good, *extra) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing created beside --output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--name", "../escape"],
            "--name '../escape' must be one folder name (letters, digits, '.', '_', '+', '-'; starting with "
            "a letter or digit; no '/', no '..'); it is also RecBole's dataset name",
        ),
        (
            ["--name", "a/b"],
            "--name 'a/b' must be one folder name (letters, digits, '.', '_', '+', '-'; starting with "
            "a letter or digit; no '/', no '..'); it is also RecBole's dataset name",
        ),
    ],
    ids=["name-dotdot", "name-slash"],
)
def test_names_that_escape(tmp_path: Path, capsys, good: Path, extra, message) -> None:
    assert assert_refused(capsys, MAGAZINE, good, *extra) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing created beside --output


def test_one_user_dataset(tmp_path: Path, capsys, magazine: Path, rows) -> None:
    by_user: dict[bytes, list[list[bytes]]] = {}
    for cells in rows:
        by_user.setdefault(cells[1], []).append(cells)
    busiest = max(by_user.values(), key=len)
    source = magazine_input(tmp_path / "one", busiest, magazine)
    status, _, message = convert(capsys, source, tmp_path / "out")
    asins = meta_asins(magazine)
    with_meta = [c for c in busiest if c[0] in asins]  # full file: one of the user's items has no metadata
    kept = len({c[0] for c in with_meta})  # each item once
    drops = {"missing_metadata": len(busiest) - len(with_meta), "duplicate": len(with_meta) - kept}
    assert kept > 0
    assert status == 2 and message == (
        "no interaction left after filtering: the iterative k-core (--min-user-inter 5, --min-item-inter 5; "
        f"before it the most active user had {kept} interactions and the most popular item 1; lower the "
        "thresholds or add data) dropped the last rows; rows dropped by reason: "
        + json.dumps({**{k: v for k, v in drops.items() if v}, "k_core": kept})
    )
    assert not (tmp_path / "out" / NAME).exists()


def test_output_that_cannot_be_written(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("a regular file where a folder should be")
    status, _, message = convert(capsys, MAGAZINE, tmp_path / "file" / "out")
    assert (
        status == 2
        and message == f"{tmp_path / 'file' / 'out'}: cannot write the output folder (Not a directory)"
    )


@contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """Make ``folder`` unwritable for this process; yields the error text to expect. Root ignores
    permission bits, so as root the folder is made immutable (chattr +i) instead, or the test skipped."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield "Permission denied"
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode:
        pytest.skip("running as root without chattr +i: no way to make a folder unwritable")
    try:
        yield "Operation not permitted"
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_output_folder(capsys, good: Path) -> None:
    before = snapshot(good)
    with read_only(good) as reason:
        status, _, message = convert(capsys, MAGAZINE, good, "--force")
    assert status == 2 and message == f"{good / '.mag.lock'}: cannot write the output folder ({reason})"
    assert snapshot(good) == before and [p.name for p in good.iterdir()] == [NAME]


def test_2014_folder_with_only_the_5core_file(tmp_path: Path, capsys) -> None:
    args = ["convert", "--category", "2014:Digital_Music", "--input", str(MUSIC), "--output", str(tmp_path)]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "srt-prep: error: 2014:Digital_Music:ratings: file ratings_Digital_Music.csv (or "
        f"ratings_Digital_Music.csv.gz) not found in {MUSIC}; {MUSIC / 'reviews_Digital_Music_5.json.gz'} "
        "is there: that is the '5core' file; read it with --source 5core (or --category "
        "2014:Digital_Music:5core)\n"
    )


def test_corrupt_gzip_in_the_middle(tmp_path: Path, capsys, good: Path) -> None:
    raw = bytearray((MAGAZINE / f"{CSV_NAME}.gz").read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    source = tmp_path / "corrupt"
    source.mkdir()
    (source / f"{CSV_NAME}.gz").write_bytes(bytes(raw))
    (source / META_NAME).symlink_to(MAGAZINE / META_NAME)
    message = assert_refused(capsys, source, good)
    assert message.startswith(f"{source / CSV_NAME}.gz: corrupt gzip stream (Error -3 while decompressing")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({CSV_NAME: b""}, "{src}/Magazine_Subscriptions.csv: empty interaction file"),
        ({CSV_NAME: b"\n\n"}, "{src}/Magazine_Subscriptions.csv: empty interaction file"),
        ({CSV_NAME: None}, "{src}/Magazine_Subscriptions.csv is a folder, not the file"),
        (
            {f"{CSV_NAME}.gz": b"\x1f\x8b\x08\x00junk"},
            "{src}/Magazine_Subscriptions.csv.gz: the gzip stream ends before any interaction line",
        ),
        (
            {f"{CSV_NAME}.gz": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage garbage"},
            "{src}/Magazine_Subscriptions.csv.gz: corrupt gzip stream (Error -3 while decompressing data",
        ),
        ({META_NAME: b"<html><body>Forbidden</body></html>\n"}, "no readable metadata record"),
        ({META_NAME: None}, "{src}/meta_Magazine_Subscriptions.json.gz is a folder, not the file"),
    ],
    ids=["empty", "blank-lines", "csv-folder", "gzip-header-only", "bad-gzip", "html-meta", "meta-folder"],
)
def test_unusable_files(tmp_path: Path, capsys, good: Path, files: dict, message: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    real = {CSV_NAME: MAGAZINE / f"{CSV_NAME}.gz", META_NAME: MAGAZINE / META_NAME}
    for name, target in real.items():
        if not any(key.startswith(name) for key in files):
            (src / target.name).symlink_to(target)
    for name, data in files.items():
        if data is None:
            (src / name).mkdir()
        else:
            (src / name).write_bytes(data)
    assert message.format(src=src) in assert_refused(capsys, src, good)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (None, "{spec}: is a folder, not a file"),
        (b"2018:Magazine_Subscriptions\n\xc3(\n", "{spec}:2: not UTF-8 text (invalid continuation byte)"),
        (b"# nothing\n", "no category given: use --category (repeatable) or --spec"),
    ],
    ids=["folder", "binary", "only-comments"],
)
def test_bad_spec_file(tmp_path: Path, capsys, spec: bytes | None, message: str) -> None:
    path = tmp_path / "spec"
    if spec is None:
        path.mkdir()
    else:
        path.write_bytes(spec)
    status = main(["convert", "--spec", str(path), "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert status == 2 and capsys.readouterr().err == f"srt-prep: error: {message.format(spec=path)}\n"


def test_debug_shows_the_traceback(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["convert", "--category", "2018:All_Beauty", "--input", str(tmp_path), "--output", str(tmp_path)]
    with pytest.raises(PrepError, match="not found"):
        main(["--debug", *args])
    with pytest.raises(PrepError, match="not found"):
        main([args[0], "--debug", *args[1:]])  # after the subcommand too
    monkeypatch.setenv("SRT_DEBUG", "1")
    with pytest.raises(PrepError, match="not found"):
        main(args)
    monkeypatch.setenv("SRT_DEBUG", "0")
    assert main(args) == 2


def test_internal_error_is_one_line_with_exit_1(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(opts: object) -> dict:
        raise RuntimeError("a bug")

    monkeypatch.setattr(convert_module, "convert", broken)
    args = ["convert", "--category", "2018:All_Beauty", "--input", str(tmp_path), "--output", str(tmp_path)]
    assert main(args) == 1
    assert capsys.readouterr().err == (
        "srt-prep: error: internal error RuntimeError: a bug (please report it; rerun with --debug or "
        "SRT_DEBUG=1 for the traceback)\n"
    )


def test_an_error_message_with_line_breaks_is_one_line(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(opts: object) -> dict:
        raise PrepError("the first line\nThe second:\r\n  third", tmp_path)

    monkeypatch.setattr(convert_module, "convert", broken)
    args = ["convert", "--category", "2018:All_Beauty", "--input", str(tmp_path), "--output", str(tmp_path)]
    assert main(args) == 2
    assert capsys.readouterr().err == f"srt-prep: error: {tmp_path}: the first line The second: third\n"


# --- 6. the engine: memory limit and spill folder ---------------------------------------------------------


def test_engine_memory_limit_and_temp_dir(tmp_path: Path, capsys, good: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    message = assert_refused(
        capsys, MAGAZINE, good, "--force", "--memory-limit", "8MB", "--temp-dir", str(spill)
    )
    assert message.startswith(
        "the conversion needs more memory than --memory-limit 8MB gives the engine, even spilling to "
        f"{spill}: raise the limit (Out of Memory Error: "
    )
    assert assert_refused(capsys, MAGAZINE, good, "--force", "--memory-limit", "lots") == (
        "--memory-limit 'lots' is not a size such as 4GB, 512MB or 1.5GiB"
    )
    absent = tmp_path / "absent"
    assert assert_refused(capsys, MAGAZINE, good, "--force", "--temp-dir", str(absent)) == (
        f"{absent}: --temp-dir is not a folder"
    )
    # Engine settings do not change the output: the same options are up to date whatever they are.
    assert "up to date" in convert(capsys, MAGAZINE, good, "--memory-limit", "64MB")[1]
    out = tmp_path / "small"
    assert convert(capsys, MAGAZINE, out, "--memory-limit", "64MB", "--temp-dir", str(spill))[0] == 0
    assert (out / NAME / f"{NAME}.inter").read_bytes() == (good / NAME / f"{NAME}.inter").read_bytes()
    assert (out / NAME / f"{NAME}.item").read_bytes() == (good / NAME / f"{NAME}.item").read_bytes()
    assert list(spill.iterdir()) == []  # the engine's spill folder is gone


# --- 7. the training hint -----------------------------------------------------------------------------


def test_convert_suggests_srt(tmp_path: Path, capsys) -> None:
    status, out, _ = convert(capsys, MAGAZINE, tmp_path)
    assert status == 0
    assert out.splitlines()[-1] == (
        f"train: run_recbole --model=SRT --dataset={NAME} --config_files={tmp_path / NAME}/{NAME}.yaml"
    )
