"""convert on hand-written fixtures (2023 schema, merges, filters) and on bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_prep.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "prep"
REPO = Path(__file__).parents[1]


ONE = ["--min-user-inter", "1", "--min-item-inter", "1"]


def run(*args: str) -> int:
    return main(["convert", *args])


def inter_rows(folder: Path, name: str) -> list[list[str]]:
    lines = (folder / name / f"{name}.inter").read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines[1:]]


def item_rows(folder: Path, name: str) -> dict[str, list[str]]:
    lines = (folder / name / f"{name}.item").read_text(encoding="utf-8").splitlines()
    assert all(len(line.split("\t")) == 5 for line in lines)
    return {line.split("\t")[0]: line.split("\t")[1:] for line in lines[1:]}


def report(folder: Path, name: str) -> dict:
    return json.loads((folder / name / "report.json").read_text(encoding="utf-8"))


def test_2023_schema_parent_asin_ms_and_ordering(tmp_path: Path) -> None:
    args = ["--category", "2023:All_Beauty", "--input", str(FIXTURES), "--output", str(tmp_path)]
    assert run(*args, "--min-user-inter", "1", "--min-item-inter", "1") == 0
    name = "amazon2023-all_beauty"
    rows = inter_rows(tmp_path, name)
    # Keyed on parent_asin; ms -> s as floats (sub-second order kept); the same-millisecond tie of
    # AEUSER0002 keeps file order; the repeated (AEUSER0002, P0000001) keeps the earliest; P0000005 has no
    # metadata and is dropped; AEUSER0003's earliest review is listed last in the file.
    assert [(u, i, float(t)) for u, i, _, t in rows] == [
        ("AEUSER0001", "P0000001", 1600000000.0),
        ("AEUSER0001", "P0000003", 1600000000.2),
        ("AEUSER0001", "P0000002", 1600000000.5),
        ("AEUSER0002", "P0000001", 1600000100.0),
        ("AEUSER0002", "P0000002", 1600000100.0),
        ("AEUSER0003", "P0000001", 1599999999.0),
        ("AEUSER0003", "P0000004", 1600000300.0),
        ("AEUSER0004", "P0000002", 1610000000.0),
    ]
    assert rows[3][2] == "5"  # the kept duplicate is the earliest (rating 5), not the later 1
    rep = report(tmp_path, name)
    assert rep["rows"] == {"read": 10, "kept": 8}
    assert rep["dropped"]["missing_metadata"] == 1 and rep["dropped"]["duplicate"] == 1
    assert rep["items"]["missing_metadata"] == 1 and rep["items"]["missing_text"] == 1
    assert rep["metadata"][0]["duplicate_records"] == 1 and rep["metadata"][0]["not_needed"] == 1

    items = item_rows(tmp_path, name)
    assert items["P0000001"] == [
        "Gentle Shampoo & Conditioner",
        "CleanCo",
        "All Beauty",
        "Line one with a tab Line two with a newline",
    ]
    assert items["P0000002"][:3] == ["Nail 'Gloss' Kit", "Polish Ltd", "All Beauty, Beauty, Nails"]
    assert items["P0000004"] == ["", "", "", ""]  # kept (missing text policy: keep), counted above


def test_2023_gzipped_and_filters(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("All_Beauty.jsonl", "meta_All_Beauty.jsonl"):
        (src / f"{name}.gz").write_bytes(gzip.compress((FIXTURES / "2023" / name).read_bytes()))
    common = ["--category", "2023:All_Beauty", "--input", str(src), "--output", str(tmp_path / "o")]
    common += ["--min-user-inter", "1", "--min-item-inter", "1", "--name", "b"]
    assert (
        run(*common, "--min-rating", "4", "--missing-text", "drop", "--dedup", "last", "--end", "2020-12-01")
        == 0
    )
    rep = report(tmp_path / "o", "b")
    # ratings < 4: lines 3, 5, 6, 10; line 10 is also after --end: counted under time_range (runs first)
    assert rep["dropped"]["time_range"] == 1
    assert rep["dropped"]["rating_threshold"] == 3
    assert rep["dropped"]["missing_metadata"] == 1 and rep["dropped"]["missing_text"] == 1
    assert rep["dropped"]["duplicate"] == 0  # the repeat (rating 1) was already dropped by the threshold
    assert [(u, i) for u, i, _, _ in inter_rows(tmp_path / "o", "b")] == [
        ("AEUSER0001", "P0000001"),
        ("AEUSER0001", "P0000002"),
        ("AEUSER0002", "P0000001"),
        ("AEUSER0003", "P0000001"),
    ]
    assert run(*common, "--dedup", "last", "--force") == 0
    kept = {(u, i): r for u, i, r, _ in inter_rows(tmp_path / "o", "b")}
    assert kept[("AEUSER0002", "P0000001")] == "1"  # the latest of the repeated pair
    assert run(*common, "--dedup", "all", "--force") == 0
    assert len(inter_rows(tmp_path / "o", "b")) == 9


def test_iterative_k_core(tmp_path: Path) -> None:
    # 2023 fixture with 2-core: after dropping P0000005 (no meta) and the duplicate, AEUSER0004 (1 row)
    # goes, then P0000003 and P0000004 (1 row each), which leaves AEUSER0003 with 1 row, who goes too.
    args = [
        "--category",
        "2023:All_Beauty",
        "--input",
        str(FIXTURES),
        "--output",
        str(tmp_path),
        "--name",
        "k",
    ]
    assert run(*args, "--min-user-inter", "2", "--min-item-inter", "2") == 0
    assert [(u, i) for u, i, _, _ in inter_rows(tmp_path, "k")] == [
        ("AEUSER0001", "P0000001"),
        ("AEUSER0001", "P0000002"),
        ("AEUSER0002", "P0000001"),
        ("AEUSER0002", "P0000002"),
    ]
    assert report(tmp_path, "k")["dropped"]["k_core"] == 4


def test_merge_releases_and_categories_with_leakage_guard(tmp_path: Path) -> None:
    finetune = tmp_path / "ft.inter"
    finetune.write_text("user_id:token\titem_id:token\ttimestamp:float\nA0000004\tX\t1\nNOT_HERE\tY\t2\n")
    spec = tmp_path / "spec.txt"
    spec.write_text("# pre-training mix\n2014:Beauty\n2018:All_Beauty:ratings  # item-first CSV\n")
    args = ["--spec", str(spec), "--category", "2023:All_Beauty", "--input", str(FIXTURES)]
    args += ["--output", str(tmp_path), "--name", "mix", "--min-user-inter", "1", "--min-item-inter", "1"]
    assert run(*args, "--exclude-users-of", str(finetune)) == 0
    rows = inter_rows(tmp_path, "mix")
    users = {u for u, *_ in rows}
    items = {i for _, i, *_ in rows}
    assert "A0000004" not in users  # the fine-tuning user is gone
    assert {"2014_B000000001", "2018_B000000001"} <= items  # same asin, different releases: two items
    assert ("A0000001", "2018_B000000004") in {(u, i) for u, i, *_ in rows}  # 2018 CSV is item-first
    rep = report(tmp_path, "mix")
    assert rep["dropped"]["excluded_user"] == 1 and rep["users"]["excluded"] == 1
    assert rep["rows"]["read"] == 5 + 3 + 10
    titles = {i: row[0] for i, row in item_rows(tmp_path, "mix").items()}
    assert titles["2014_B000000001"] == "Lip Balm" and titles["2018_B000000001"] == "Hair Oil"
    assert titles["2014_B000000003"] == "Eye Liner"

    # One release, two categories sharing an asin: one item; its first metadata record wins.
    args = ["--release", "2018", "--category", "All_Beauty", "--category", "Luxury_Beauty"]
    args += ["--input", str(FIXTURES), "--output", str(tmp_path), "--name", "two"]
    assert run(*args, "--min-user-inter", "1", "--min-item-inter", "1") == 0
    assert {i for _, i, *_ in inter_rows(tmp_path, "two")} == {"B000000001", "B000000004"}
    assert item_rows(tmp_path, "two")["B000000004"][0] == "Comb"
    assert report(tmp_path, "two")["metadata"][1]["duplicate_records"] == 1


def test_2014_literal_text_cleaning(tmp_path: Path) -> None:
    args = ["--category", "2014:Beauty", "--input", str(FIXTURES), "--output", str(tmp_path), "--name", "b"]
    assert run(*args, "--min-user-inter", "1", "--min-item-inter", "1") == 0
    items = item_rows(tmp_path, "b")
    assert items["B000000001"] == ["Lip Balm", "Balmy", "Beauty, Lips, Skin Care", "Soft lips."]
    assert items["B000000002"][0] == "Rosy's Blush"
    assert items["B000000003"][3] == "A tab here and a newline there."
    assert [u for u, *_ in inter_rows(tmp_path, "b")] == ["A0000001"] * 2 + ["A0000002"] * 2 + ["A0000003"]


def copy_fixture(tmp_path: Path, release: str, files: dict[str, bytes]) -> Path:
    src = tmp_path / "in" / release
    src.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
    return src.parent


def test_bad_lines_are_counted_and_kept_rows_survive(tmp_path: Path, capsys) -> None:
    reviews = (FIXTURES / "2023" / "All_Beauty.jsonl").read_bytes().splitlines(keepends=True)
    bad = [b"this is not JSON\n", b'{"user_id": "AEUSER0009", "parent_asin": "P0000001"}\n', b"[1, 2]\n"]
    # a copy of line 1 one millisecond later (an exact duplicate would be dropped as one), with bad bytes
    non_utf8 = reviews[0].replace(b'"Love it"', b'"Caf\xe9 \xff"').replace(b"00000000,", b"00000001,")
    data = b"".join([reviews[0], bad[0], *reviews[1:4], bad[1], non_utf8, bad[2], *reviews[4:]])
    src = copy_fixture(
        tmp_path,
        "2023",
        {
            "All_Beauty.jsonl": data,
            "meta_All_Beauty.jsonl": (FIXTURES / "2023" / "meta_All_Beauty.jsonl").read_bytes(),
        },
    )
    args = ["--category", "2023:All_Beauty", "--input", str(src), "--output", str(tmp_path), "--name", "x"]
    assert run(*args, "--min-user-inter", "1", "--min-item-inter", "1", "--dedup", "all") == 0
    err = capsys.readouterr().err
    assert "malformed" in err and "line 2" in err
    rep = report(tmp_path, "x")
    assert rep["dropped"]["malformed_line"] == 3
    assert rep["inputs"][0]["non_utf8"] == 1
    assert rep["rows"]["read"] == len(reviews) + 4
    assert rep["rows"]["kept"] == len(reviews) + 1 - 1  # + the non-UTF-8 copy (kept), - P0000005 (no meta)
    examples = rep["inputs"][0]["examples"]
    assert examples[0].startswith("line 2: not JSON") and examples[1].startswith("line 6: missing key")


def test_metadata_code_execution_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    meta = (FIXTURES / "2014" / "meta_Beauty.json").read_bytes()
    attack = f"__import__('os').system('touch {marker}')\n".encode()
    attack2 = f"{{'asin': 'B000000002', 'title': __import__('os').system('touch {marker}')}}\n".encode()
    src = copy_fixture(
        tmp_path,
        "2014",
        {
            "ratings_Beauty.csv": (FIXTURES / "2014" / "ratings_Beauty.csv").read_bytes(),
            "meta_Beauty.json": attack + attack2 + meta,
        },
    )
    args = ["--category", "2014:Beauty", "--input", str(src), "--output", str(tmp_path), "--name", "m"]
    assert run(*args, "--min-user-inter", "1", "--min-item-inter", "1") == 0
    assert not marker.exists()
    rep = report(tmp_path, "m")
    assert rep["metadata"][0]["malformed"] == 2
    assert rep["metadata"][0]["examples"][0].startswith("line 1: not a Python dict literal")
    assert item_rows(tmp_path, "m")["B000000002"][0] == "Rosy's Blush"  # from the genuine record


def test_non_utf8_in_csv_and_metadata(tmp_path: Path) -> None:
    csv = (FIXTURES / "2018" / "All_Beauty.csv").read_bytes() + b"B000000004,A\xff0000009,5.0,1500000400\n"
    meta = (FIXTURES / "2018" / "meta_All_Beauty.json").read_bytes().replace(b'"Comb"', b'"Comb \xe9"')
    src = copy_fixture(tmp_path, "2018", {"All_Beauty.csv": csv, "meta_All_Beauty.json": meta})
    args = ["--category", "2018:All_Beauty", "--input", str(src), "--output", str(tmp_path), "--name", "u"]
    assert run(*args, "--min-user-inter", "1", "--min-item-inter", "1") == 0
    rep = report(tmp_path, "u")
    assert rep["inputs"][0]["non_utf8"] == 1 and rep["metadata"][0]["non_utf8"] == 1
    assert rep["rows"]["kept"] == 4
    assert item_rows(tmp_path, "u")["B000000004"][0] == "Comb \ufffd"


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        (
            {"All_Beauty.csv": b"", "meta_All_Beauty.json": b"{}\n"},
            [],
            "All_Beauty.csv: empty interaction file",
        ),
        (
            {"All_Beauty.csv": gzip.compress(b""), "meta_All_Beauty.json": b"{}\n"},
            [],
            "empty interaction file",
        ),
        (
            {"All_Beauty.csv": b"B1,A1,5.0,1500000000\n", "meta_All_Beauty.json": b""},
            [],
            "empty metadata file",
        ),
        (
            {
                "All_Beauty.csv": (FIXTURES / "2023" / "All_Beauty.jsonl").read_bytes(),
                "meta_All_Beauty.json": b"",
            },
            [],
            "All_Beauty.csv: no readable interaction record; wrong file or format? First problem: line 1:",
        ),
        ({"meta_All_Beauty.json": b"{}\n"}, [], "file All_Beauty.csv (or All_Beauty.csv.gz) not found"),
        ({}, ["--category", "2018:All_Beuaty"], "no category 'All_Beuaty'; did you mean 'All_Beauty'?"),
        ({}, ["--category", "2023:All_Beauty:0core"], "release 2023 publishes no '0core' files"),
        (
            {"All_Beauty.csv": b"B1,A1,5.0,1500000000\n", "meta_All_Beauty.json": b"{}\n"},
            [],
            "no readable metadata record",
        ),
        (
            {
                "All_Beauty.csv": b"B1,A1,5.0,1500000000\n",
                "meta_All_Beauty.json": b'{"asin": "B1", "title": "t"}\n',
            },
            ["--min-user-inter", "2"],
            "no interaction left after filtering",
        ),
    ],
)
def test_unusable_input_exits_2_with_a_clear_message(tmp_path, capsys, files, args, message) -> None:
    src = copy_fixture(tmp_path, "2018", files)
    argv = ["--input", str(src), "--output", str(tmp_path / "out"), *args]
    if "--category" not in args:
        argv += ["--category", "2018:All_Beauty"]
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "amazon2018-all_beauty" / "report.json").exists()


def test_python_m_entry_point_and_list() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dataset_prep", "list"], capture_output=True, text=True, cwd=REPO, check=True
    )
    lines = done.stdout.splitlines()
    assert sum(line.startswith("2014 ") for line in lines) == 24
    assert sum(line.startswith("2018 ") for line in lines) == 29
    assert sum(line.startswith("2023 ") for line in lines) == 34  # 33 + Unknown
    assert any(
        "Magazine_Subscriptions.csv" in line and "meta_Magazine_Subscriptions.json.gz" in line
        for line in lines
    )
    assert any(line.startswith("2014 ") and "reviews (reviews_Beauty.json.gz)" in line for line in lines)
    assert any(
        "ratings (All_Beauty.0core.csv.gz), 5core (All_Beauty.5core.csv.gz)" in line
        for line in lines
        if line.startswith("2023 ")
    )
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "dataset_prep",
            "convert",
            "--category",
            "2018:Bookz",
            "--input",
            ".",
            "--output",
            "/tmp/x",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 2 and "did you mean 'Books'?" in bad.stderr


def test_malformed_csv_lines(tmp_path: Path) -> None:
    good = (FIXTURES / "2014" / "ratings_Beauty.csv").read_bytes()
    bad = b"A0000009,B000000001,five,1300000500\nA0000009,B000000001\n\n"
    bad += b"A0000009,,5.0,1\nA0000009,B000000001,5.0,nan\n"
    csv = good + bad + b"A0000004,B000000003,4.0,1300000600"  # last line without a newline: still complete
    src = copy_fixture(
        tmp_path,
        "2014",
        {
            "ratings_Beauty.csv": csv,
            "meta_Beauty.json": (FIXTURES / "2014" / "meta_Beauty.json").read_bytes(),
        },
    )
    args = ["--category", "2014:Beauty", "--input", str(src), "--output", str(tmp_path), "--name", "c"]
    assert run(*args, "--min-user-inter", "1", "--min-item-inter", "1") == 0
    rep = report(tmp_path, "c")
    assert rep["dropped"]["malformed_line"] == 4  # the blank line is not a row
    assert rep["rows"] == {"read": 5 + 4 + 1, "kept": 6}
    assert [e.split(":")[0] for e in rep["inputs"][0]["examples"]] == [
        "line 6",
        "line 7",
        "line 9",
        "line 10",
    ]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # RecBole's own pandas fillna warnings
def test_2023_missing_meta_kept_and_loaded_by_recbole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [
        "--category",
        "2023:All_Beauty",
        "--input",
        str(FIXTURES),
        "--output",
        str(tmp_path),
        "--name",
        "k23",
    ]
    assert run(*args, "--min-user-inter", "1", "--min-item-inter", "1", "--missing-meta", "keep") == 0
    rep = report(tmp_path, "k23")
    assert rep["dropped"]["missing_metadata"] == 0 and rep["items"]["kept_without_metadata"] == 1
    assert item_rows(tmp_path, "k23")["P0000005"] == ["", "", "", ""]

    from recbole.config import Config
    from recbole.data import create_dataset

    monkeypatch.setattr(sys, "argv", ["pytest"])  # RecBole's Config parses --key=value from sys.argv
    config = Config(
        model="SASRec",
        dataset="k23",
        config_file_list=[str(tmp_path / "k23" / "k23.yaml")],
        config_dict={"train_neg_sample_args": None, "loss_type": "CE", "show_progress": False},
    )
    dataset = create_dataset(config)
    assert dataset.inter_num == rep["rows"]["kept"] == 9
    assert dataset.item_num - 1 == 5  # no interaction lost to a missing .item row
    ids = dataset.field2id_token["item_id"]
    title = dataset.field2id_token["title"]
    row = list(ids).index("P0000001")
    words = [title[t] for t in dataset.item_feat["title"][row].tolist() if t]
    assert words == ["Gentle", "Shampoo", "&", "Conditioner"]


def test_2023_benchmark_rating_only_csvs(tmp_path: Path) -> None:
    """The 0-core CSV holds the reviews' ratings without repeats: it converts to the very same .inter and
    .item as the review file. Its header is no record; the 5-core CSV converts too."""
    common = ["--input", str(FIXTURES), *ONE]
    assert run("--category", "2023:All_Beauty", "--output", str(tmp_path / "reviews"), *common) == 0
    assert run("--category", "2023:All_Beauty:ratings", "--output", str(tmp_path / "ratings"), *common) == 0
    name = "amazon2023-all_beauty"
    for suffix in ("inter", "item"):
        reviews = (tmp_path / "reviews" / name / f"{name}.{suffix}").read_bytes()
        assert (tmp_path / "ratings" / name / f"{name}.{suffix}").read_bytes() == reviews
    rep = report(tmp_path / "ratings", name)
    assert rep["rows"] == {"read": 9, "kept": 8} and rep["inputs"][0]["lines"] == 9
    assert rep["dropped"]["duplicate"] == 0 and rep["dropped"]["malformed_line"] == 0
    assert rep["inputs"][0]["timestamps"]["unit"] == "ms"
    assert run("--category", "2023:All_Beauty:5core", "--output", str(tmp_path / "core"), *common) == 0
    assert len(inter_rows(tmp_path / "core", name)) == 5


def test_2023_benchmark_csv_line_numbers_and_header_only(tmp_path: Path, capsys) -> None:
    data = (FIXTURES / "2023" / "All_Beauty.0core.csv").read_bytes().splitlines(keepends=True)
    src = copy_fixture(
        tmp_path,
        "2023",
        {
            "All_Beauty.0core.csv": b"".join(
                [*data[:3], b"AEUSER0009,P0000001,five,1600000000000\n", *data[3:]]
            ),
            "meta_All_Beauty.jsonl": (FIXTURES / "2023" / "meta_All_Beauty.jsonl").read_bytes(),
        },
    )
    args = ["--category", "2023:All_Beauty:ratings", "--input", str(src), *ONE]
    assert run(*args, "--output", str(tmp_path / "o"), "--name", "b") == 0
    rep = report(tmp_path / "o", "b")
    assert rep["inputs"][0]["examples"][0].startswith("line 4: ")  # the header is line 1
    assert rep["dropped"]["malformed_line"] == 1 and rep["rows"]["read"] == 10
    (src / "2023" / "All_Beauty.0core.csv").write_bytes(data[0])
    assert run(*args, "--output", str(tmp_path / "o2")) == 2
    assert "All_Beauty.0core.csv: empty interaction file" in capsys.readouterr().err


def test_2023_benchmark_csv_under_its_published_name(tmp_path: Path, capsys) -> None:
    src = copy_fixture(tmp_path, "2023", {"All_Beauty.csv.gz": b"", "meta_All_Beauty.jsonl": b""})
    assert (
        run("--category", "2023:All_Beauty:5core", "--input", str(src), "--output", str(tmp_path / "o")) == 2
    )
    assert capsys.readouterr().err == (
        f"srt-prep: error: 2023:All_Beauty:5core: file All_Beauty.5core.csv.gz (or All_Beauty.5core.csv) not "
        f"found in {src}; {src / '2023' / 'All_Beauty.csv.gz'} is there under its published name, which the "
        "2023 benchmark's 0core and 5core files share: rename it to All_Beauty.5core.csv.gz if it is the "
        "'5core' file\n"
    )


def test_2014_full_review_file(tmp_path: Path) -> None:
    """The full 2014 review file (the 5-core file's layout) holds the ratings CSV's rows here: the same
    output."""
    common = ["--input", str(FIXTURES), *ONE]
    assert run("--category", "2014:Beauty", "--output", str(tmp_path / "csv"), *common) == 0
    assert run("--category", "2014:Beauty:reviews", "--output", str(tmp_path / "json"), *common) == 0
    name = "amazon2014-beauty"
    for suffix in ("inter", "item"):
        csv = (tmp_path / "csv" / name / f"{name}.{suffix}").read_bytes()
        assert (tmp_path / "json" / name / f"{name}.{suffix}").read_bytes() == csv
    assert report(tmp_path / "json", name)["inputs"][0]["entry"] == "2014:Beauty:reviews"
