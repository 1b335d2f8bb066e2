"""convert against a frozen reference: the outputs of the converter as it was before the out-of-core engine.

``fixtures/prep/reference.json`` holds, for each case below, the sha256 of ``NAME.inter`` and ``NAME.item``
and the counts of ``report.json`` (or the error message), as the in-memory converter of commit 561f223
wrote them. Every case must still give byte-identical files, the same counts and the same messages.
Cases on the real files read the full data named by $RECBOLE_SRT_TEST_DATA (their reference is that of the
full files, not of the slices in tests/data) and are skipped without it. Inputs marked "derived" are built
here from the fixtures or the real files by a fixed transformation.

Regenerate (only when an output is meant to change):
``RECBOLE_SRT_TEST_DATA=PATH/TO/data python tests/test_prep_reference.py --write COMMIT``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TEST_DATA_ENV, full_data

from dataset_prep.cli import main

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures" / "prep"
REFERENCE = FIXTURES / "reference.json"
MAGAZINE = "amazon2018-magazine-subscriptions"  # folders of the full data named by $RECBOLE_SRT_TEST_DATA
MUSIC = "amazon2014-digital-music-truncated"
MAG_CSV = "Magazine_Subscriptions.csv"
MAG_META = "meta_Magazine_Subscriptions.json.gz"
ONE = ["--min-user-inter", "1", "--min-item-inter", "1"]
REPORT_KEYS = ("rows", "dropped", "users", "items", "inputs", "metadata", "warnings")


def _magazine() -> Path:
    """The full Magazine_Subscriptions folder (the test is skipped without it)."""
    return full_data(MAGAZINE)


def _magazine_rows() -> list[list[bytes]]:
    return [
        line.split(b",")
        for line in gzip.decompress((_magazine() / f"{MAG_CSV}.gz").read_bytes()).splitlines()
    ]


def _magazine_with(folder: Path, rows: list[list[bytes]]) -> None:
    folder.mkdir(parents=True)
    (folder / MAG_CSV).write_bytes(b"".join(b",".join(cells) + b"\n" for cells in rows))
    (folder / MAG_META).symlink_to(_magazine() / MAG_META)


def _times(change: Callable[[int, bytes], bytes]) -> Callable[[Path], None]:
    """Derived Magazine input: the ratings CSV with its timestamps changed row by row."""
    return lambda folder: _magazine_with(
        folder, [[*c[:3], change(i, c[3])] for i, c in enumerate(_magazine_rows())]
    )


def _swapped(folder: Path) -> None:
    _magazine_with(folder, [[c[1], c[0], c[2], c[3]] for c in _magazine_rows()])


def _two_members(folder: Path) -> None:
    raw = gzip.decompress((_magazine() / f"{MAG_CSV}.gz").read_bytes())
    folder.mkdir(parents=True)
    cut = len(raw) // 3
    (folder / f"{MAG_CSV}.gz").write_bytes(gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]))
    (folder / MAG_META).symlink_to(_magazine() / MAG_META)


def _exclusions(folder: Path) -> None:
    """A fine-tuning ``.inter`` holding the users of every 7th Magazine row."""
    folder.mkdir(parents=True)
    users = dict.fromkeys(c[1].decode() for c in _magazine_rows()[::7])
    lines = ["user_id:token\titem_id:token\ttimestamp:float", *(f"{u}\tX\t1" for u in users)]
    (folder / "ft.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _fixture_copy(folder: Path, release: str, files: dict[str, bytes]) -> None:
    (folder / release).mkdir(parents=True)
    for name, data in files.items():
        (folder / release / name).write_bytes(data)


def _bad_reviews_2023(folder: Path) -> None:
    reviews = (FIXTURES / "2023" / "All_Beauty.jsonl").read_bytes().splitlines(keepends=True)
    bad = [b"this is not JSON\n", b'{"user_id": "AEUSER0009", "parent_asin": "P0000001"}\n', b"[1, 2]\n"]
    non_utf8 = reviews[0].replace(b'"Love it"', b'"Caf\xe9 \xff"')
    data = b"".join([reviews[0], bad[0], *reviews[1:4], bad[1], non_utf8, bad[2], *reviews[4:]])
    meta = (FIXTURES / "2023" / "meta_All_Beauty.jsonl").read_bytes()
    _fixture_copy(folder, "2023", {"All_Beauty.jsonl": data, "meta_All_Beauty.jsonl": meta})


def _bad_csv_2014(folder: Path) -> None:
    good = (FIXTURES / "2014" / "ratings_Beauty.csv").read_bytes()
    bad = b"A0000009,B000000001,five,1300000500\nA0000009,B000000001\n\n"
    bad += b"A0000009,,5.0,1\nA0000009,B000000001,5.0,nan\n"
    csv = good + bad + b"A0000004,B000000003,4.0,1300000600"
    meta = (FIXTURES / "2014" / "meta_Beauty.json").read_bytes()
    _fixture_copy(folder, "2014", {"ratings_Beauty.csv": csv, "meta_Beauty.json": meta})


def _odd_tokens_2018(folder: Path) -> None:
    """Ids that cannot be RecBole tokens (a quote, a no-break space), non-UTF-8 bytes, ratings that float32
    cannot hold exactly, and the same time twice."""
    csv = (FIXTURES / "2018" / "All_Beauty.csv").read_bytes()
    csv += 'B000000001,A00"05,5.0,1500000300\nB000000004,A\u00a0006,4.0,1500000300\n'.encode()
    csv += b"B000000004,A\xff0000009,5.0,1500000400\nB000000001,A0000004,3.3,1500000300\n"
    csv += b"B000000001,A0000001,3.2999999,1500000000\nB000000004,A0000004,3.30000001,1500000300\n"
    meta = (FIXTURES / "2018" / "meta_All_Beauty.json").read_bytes().replace(b'"Comb"', b'"Comb \xe9"')
    _fixture_copy(folder, "2018", {"All_Beauty.csv": csv, "meta_All_Beauty.json": meta})


def _mix_inputs(folder: Path) -> None:
    """A spec of two categories and a fine-tuning ``.inter`` with one of their users."""
    folder.mkdir(parents=True)
    (folder / "spec.txt").write_text("# pre-training mix\n2014:Beauty\n2018:All_Beauty:ratings\n")
    (folder / "ft.inter").write_text("user_id:token\titem_id:token\nA0000004\tX\nNOT_HERE\tY\n")


F23 = ["--category", "2023:All_Beauty", "--input", "{fixtures}"]
MAG = ["--category", "2018:Magazine_Subscriptions", "--input", "{magazine}"]
MAG_DERIVED = ["--category", "2018:Magazine_Subscriptions", "--input", "{input}"]
MUS = ["--category", "2014:Digital_Music:5core", "--input", "{music}"]
FIX, FULL = "fixtures", "full"  # the data a case reads: tests/fixtures/prep, or the full real files
# name -> (arguments before --output, the data the case reads, how its derived input is built or None)
CASES: dict[str, tuple[list[str], str, Callable[[Path], None] | None]] = {
    "f23": ([*F23, *ONE], FIX, None),
    "f23-filters": (
        [*F23, *ONE, "--min-rating", "4", "--missing-text", "drop", "--dedup", "last", "--end", "2020-12-01"],
        FIX,
        None,
    ),
    "f23-last": ([*F23, *ONE, "--dedup", "last"], FIX, None),
    "f23-all": ([*F23, *ONE, "--dedup", "all"], FIX, None),
    "f23-kcore2": ([*F23, "--min-user-inter", "2", "--min-item-inter", "2"], FIX, None),
    "f23-keep-meta": ([*F23, *ONE, "--missing-meta", "keep"], FIX, None),
    "f23-sub-second-start": ([*F23, *ONE, "--start", "1600000000.2"], FIX, None),
    "f23-empty": ([*F23, *ONE, "--min-rating", "4", "--start", "2020-09-14"], FIX, None),
    "f23-seconds": ([*F23, *ONE, "--timestamp-unit", "s"], FIX, None),
    "f14": (["--category", "2014:Beauty", "--input", "{fixtures}", *ONE], FIX, None),
    "f14-default-kcore": (["--category", "2014:Beauty", "--input", "{fixtures}"], FIX, None),
    "f18-two-categories": (
        ["--release", "2018", "--category", "All_Beauty", "--category", "Luxury_Beauty"]
        + ["--input", "{fixtures}", "--name", "two", *ONE],
        FIX,
        None,
    ),
    "f-mix-releases": (
        ["--spec", "{input}/spec.txt", "--category", "2023:All_Beauty", "--input", "{fixtures}"]
        + ["--name", "mix", *ONE, "--exclude-users-of", "{input}/ft.inter"],
        FIX,
        _mix_inputs,
    ),
    "f23-bad-lines": (
        ["--category", "2023:All_Beauty", "--input", "{input}", *ONE, "--dedup", "all"],
        FIX,
        _bad_reviews_2023,
    ),
    "f14-bad-csv": (["--category", "2014:Beauty", "--input", "{input}", *ONE], FIX, _bad_csv_2014),
    "f18-odd-tokens": (["--category", "2018:All_Beauty", "--input", "{input}", *ONE], FIX, _odd_tokens_2018),
    "f18-odd-tokens-rating": (
        [
            "--category",
            "2018:All_Beauty",
            "--input",
            "{input}",
            *ONE,
            "--min-rating",
            "3.3",
            "--dedup",
            "last",
        ],
        FIX,
        _odd_tokens_2018,
    ),
    "mag": (MAG, FULL, None),
    "mag-rating4": ([*MAG, "--min-rating", "4"], FULL, None),
    "mag-keep-last": ([*MAG, "--missing-meta", "keep", "--dedup", "last"], FULL, None),
    "mag-all-2-3": ([*MAG, "--dedup", "all", "--min-user-inter", "2", "--min-item-inter", "3"], FULL, None),
    "mag-range": ([*MAG, "--start", "2010-01-01", "--end", "2016-01-01", *ONE], FULL, None),
    "mag-no-text": (
        [*MAG, "--missing-text", "drop", "--min-user-inter", "2", "--min-item-inter", "2"],
        FULL,
        None,
    ),
    "mag-kcore-0": ([*MAG, "--min-user-inter", "0", "--min-item-inter", "0"], FULL, None),
    "mag-exclude": (
        [*MAG, "--exclude-users-of", "{input}/ft.inter", "--min-user-inter", "2"],
        FULL,
        _exclusions,
    ),
    "mag-rating6": ([*MAG, "--min-rating", "6"], FULL, None),
    "mag-kcore-100": ([*MAG, "--min-user-inter", "100"], FULL, None),
    "mag-ms": ([*MAG_DERIVED, "--timestamp-unit", "ms"], FULL, _times(lambda i, t: t + b"000")),
    "mag-ms-refused": (MAG_DERIVED, FULL, _times(lambda i, t: t + b"000")),
    "mag-mixed-auto": (
        [*MAG_DERIVED, "--timestamp-unit", "auto"],
        FULL,
        _times(lambda i, t: t + b"000" if i % 2 else t),
    ),
    "mag-odd-drop": (
        [*MAG_DERIVED, "--odd-timestamps", "drop"],
        FULL,
        _times(lambda i, t: b"0" if i % 1000 == 0 else t),
    ),
    "mag-swapped": (MAG_DERIVED, FULL, _swapped),
    "mag-members": (MAG_DERIVED, FULL, _two_members),
    "music-3-2": ([*MUS, "--min-user-inter", "3", "--min-item-inter", "2"], FULL, None),
    "music": (MUS, FULL, None),
    "music-keep-all": ([*MUS, *ONE, "--missing-meta", "keep", "--dedup", "all"], FULL, None),
    "mag-music-merge": (
        [*MAG, "--category", "2014:Digital_Music:5core", "--input", "{music}", "--name", "mm"]
        + ["--min-user-inter", "2", "--min-item-inter", "2"],
        FULL,
        None,
    ),
}


def run_case(name: str, root: Path) -> dict:
    """Run one case under ``root``; its outputs' hashes and report counts, or its error message."""
    args, data, derive = CASES[name]
    folder = root / "in" / name
    places = {"{fixtures}": str(FIXTURES), "{input}": str(folder)}
    shown = {str(folder): "{input}", str(FIXTURES): "{fixtures}"}
    if data == FULL:  # both folders, as the reference was written from one folder holding both
        magazine, music = full_data(MAGAZINE), full_data(MUSIC)
        places |= {"{magazine}": str(magazine), "{music}": str(music)}
        shown[str(magazine.parent)] = "{data}"
    if derive is not None:
        derive(folder)
    argv = [_fill(a, places) for a in args]
    out = root / "out" / name
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        status = main(["convert", *argv, "--output", str(out)])
    shown[str(out)] = "{out}"
    if status:
        return {"status": status, "error": _normalise(err.getvalue().strip(), shown)}
    (dataset,) = [p for p in out.iterdir() if p.is_dir()]
    report = json.loads((dataset / "report.json").read_text(encoding="utf-8"))
    result = {key: report[key] for key in REPORT_KEYS}
    for record in (*result["inputs"], *result["metadata"]):
        record["path"] = _normalise(record["path"], shown)
    result["warnings"] = [_normalise(w, shown) for w in result["warnings"]]
    for suffix in ("inter", "item"):
        result[suffix] = hashlib.sha256((dataset / f"{dataset.name}.{suffix}").read_bytes()).hexdigest()
    return result


def _fill(arg: str, places: dict[str, str]) -> str:
    for key, value in places.items():
        arg = arg.replace(key, value)
    return arg


def _normalise(text: str, shown: dict[str, str]) -> str:
    """``text`` with the case's paths as placeholders, and the converter's date bound (tomorrow,
    which moves) as ``{tomorrow}``."""
    for path, placeholder in sorted(shown.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, placeholder)
    return re.sub(r"(between \d{4} and )\d{4}-\d{2}-\d{2}", r"\1{tomorrow}", text)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.real_data) if case[1] == FULL else name
        for name, case in CASES.items()
    ],
)
def test_outputs_match_the_reference(name: str, tmp_path: Path) -> None:
    expected = json.loads(REFERENCE.read_text(encoding="utf-8"))["cases"][name]
    assert run_case(name, tmp_path) == expected


def write_reference(commit: str) -> None:
    """Run every case with the converter importable now and write ``reference.json``."""
    root = Path(tempfile.mkdtemp(prefix="prep_reference_"))
    try:
        cases = {name: run_case(name, root) for name in CASES}
    finally:
        shutil.rmtree(root)
    payload = {"generated_by": f"dataset_prep at commit {commit}", "cases": cases}
    REFERENCE.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", metavar="COMMIT", required=True, help="the commit whose converter runs")
    commit = parser.parse_args().write
    if not os.environ.get(TEST_DATA_ENV):
        parser.error(
            f"set {TEST_DATA_ENV} to the folder of the full data: its cases are part of the reference"
        )
    write_reference(commit)
