"""convert on real data (the slices in tests/data, and the full data named by $RECBOLE_SRT_TEST_DATA);
every expected count is recomputed here from the raw files."""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import logging
import re
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest
from conftest import MAGAZINE, SLICES

from dataset_prep.cli import main


def complete_lines(path: Path) -> tuple[list[bytes], bool]:
    """Complete lines of a possibly truncated gzip file, and whether it was truncated (test's own reader)."""
    raw = path.read_bytes()
    data = zlib.decompressobj(wbits=31)
    text = data.decompress(raw)
    lines = text.split(b"\n")
    return lines[:-1], not data.eof


def kcore(rows: list[tuple], min_user: int, min_item: int) -> list[tuple]:
    """Iterative k-core on (user, item, ...) tuples, the plain-Python way."""
    while True:
        users = Counter(r[0] for r in rows)
        items = Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= min_user and items[r[1]] >= min_item]
        if len(kept) == len(rows):
            return kept
        rows = kept


def dedup_first(rows: list[tuple]) -> list[tuple]:
    """Earliest row per (user, item); equal times: the first in file order. rows are (u, i, r, t, pos)."""
    best: dict[tuple, tuple] = {}
    for row in rows:
        key = (row[0], row[1])
        if key not in best or row[3] < best[key][3]:
            best[key] = row
    return sorted(best.values(), key=lambda r: r[4])


def read_inter(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    return [line.split("\t") for line in lines[1:]]


def load_with_recbole(yaml_file: Path, name: str, monkeypatch: pytest.MonkeyPatch):
    """create_dataset through RecBole's own Config (sys.argv emptied: RecBole parses --key=value from it)."""
    from recbole.config import Config
    from recbole.data import create_dataset

    monkeypatch.setattr(sys, "argv", ["pytest"])
    config = Config(
        model="SASRec",
        dataset=name,
        config_file_list=[str(yaml_file)],
        config_dict={"train_neg_sample_args": None, "loss_type": "CE", "show_progress": False},
    )
    logging.getLogger().setLevel(logging.ERROR)
    return create_dataset(config)


def test_magazine_2018_counts_and_recbole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, magazine: Path
) -> None:
    convert = ["convert", "--release", "2018", "--category", "Magazine_Subscriptions"]
    convert += ["--input", str(magazine), "--output", str(tmp_path)]
    assert main(convert) == 0
    name = "amazon2018-magazine_subscriptions"
    out = tmp_path / name
    report = json.loads((out / "report.json").read_text())

    # Independent computation from the raw files.
    with gzip.open(magazine / "Magazine_Subscriptions.csv.gz", "rt", encoding="utf-8") as f:
        rows = [(u, i, float(r), float(t), pos) for pos, (i, u, r, t) in enumerate(csv.reader(f))]
    with gzip.open(magazine / "meta_Magazine_Subscriptions.json.gz", "rt", encoding="utf-8") as f:
        meta = {}
        for line in f:
            record = json.loads(line)
            meta.setdefault(record["asin"], record)
    with_meta = [r for r in rows if r[1] in meta]
    deduped = dedup_first(with_meta)
    final = kcore(deduped, 5, 5)

    assert report["rows"] == {"read": len(rows), "kept": len(final)}
    assert report["dropped"]["missing_metadata"] == len(rows) - len(with_meta)
    assert report["dropped"]["duplicate"] == len(with_meta) - len(deduped)
    assert report["dropped"]["k_core"] == len(deduped) - len(final)
    assert sum(report["dropped"].values()) + len(final) == len(rows)
    assert report["users"]["before"] == len({r[0] for r in rows})
    assert report["items"]["before"] == len({r[1] for r in rows})
    assert report["items"]["missing_metadata"] == len({r[1] for r in rows} - set(meta))
    assert report["users"]["after"] == len({r[0] for r in final})
    assert report["items"]["after"] == len({r[1] for r in final})

    # The .inter rows are exactly the kept rows, grouped by user (first appearance), time-sorted, stable.
    first_seen = {}
    for r in rows:
        first_seen.setdefault(r[0], len(first_seen))
    expected = sorted(final, key=lambda r: (first_seen[r[0]], r[3], r[4]))
    written = read_inter(out / f"{name}.inter")
    assert [(u, i, float(r), float(t)) for u, i, r, t in written] == [r[:4] for r in expected]

    # HTML-junk titles are cleaned away; every .item row has exactly 5 cells.
    item_lines = (out / f"{name}.item").read_text(encoding="utf-8").splitlines()
    assert item_lines[0].split("\t") == [
        "item_id:token",
        "title:token_seq",
        "brand:token",
        "categories:token_seq",
        "description:token_seq",
    ]
    assert all(len(line.split("\t")) == 5 for line in item_lines)
    assert not any("<span" in line or "&amp;" in line for line in item_lines)
    assert len(item_lines) - 1 == report["items"]["after"]

    dataset = load_with_recbole(out / f"{name}.yaml", name, monkeypatch)
    assert dataset.inter_num == len(final)
    assert dataset.user_num - 1 == report["users"]["after"]
    assert dataset.item_num - 1 == report["items"]["after"]

    # Rerun with the same inputs: nothing is rewritten.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(convert) == 0
    assert "up to date" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_digital_music_2014_truncated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, music: Path
) -> None:
    status = main(
        [
            "convert",
            "--category",
            "2014:Digital_Music:5core",
            "--input",
            str(music),
            "--output",
            str(tmp_path),
            "--min-user-inter",
            "3",
            "--min-item-inter",
            "2",
        ]
    )
    assert status == 0
    assert "truncated" in capsys.readouterr().err
    name = "amazon2014-digital_music"
    report = json.loads((tmp_path / name / "report.json").read_text())

    lines, truncated = complete_lines(music / "reviews_Digital_Music_5.json.gz")
    assert truncated
    records = [json.loads(line) for line in lines]
    rows = [(r["reviewerID"], r["asin"], r["overall"], r["unixReviewTime"], n) for n, r in enumerate(records)]
    meta_lines, meta_truncated = complete_lines(music / "meta_Digital_Music.json.gz")
    assert meta_truncated
    wanted = {r[1] for r in rows}
    meta = set()
    for line in meta_lines:  # parse only the lines of reviewed items (ast is slow); never eval
        found = re.match(rb"\{'asin': '([^']+)'", line)
        if found and found.group(1).decode() in wanted:
            meta.add(ast.literal_eval(line.decode("utf-8"))["asin"])
    with_meta = [r for r in rows if r[1] in meta]
    final = kcore(dedup_first(with_meta), 3, 2)

    assert report["rows"]["read"] == len(rows) + 1  # + the partial last line
    assert report["dropped"]["truncated_stream"] == 1
    assert report["dropped"]["missing_metadata"] == len(rows) - len(with_meta)
    assert report["rows"]["kept"] == len(final)
    assert report["inputs"][0]["truncated"] and report["metadata"][0]["truncated"]
    assert report["metadata"][0]["lines"] == len(meta_lines)
    assert any("truncated" in w for w in report["warnings"])

    dataset = load_with_recbole(tmp_path / name / f"{name}.yaml", name, monkeypatch)
    assert dataset.inter_num == len(final)
    titles = dataset.item_feat["title"]
    assert titles.shape[0] == dataset.item_num


def test_gzip_member_boundaries_do_not_matter(tmp_path: Path) -> None:
    """The same rows split over several gzip members, read in tiny blocks, give the same output."""
    magazine = SLICES / MAGAZINE
    raw = gzip.decompress((magazine / "Magazine_Subscriptions.csv.gz").read_bytes())
    cut = len(raw) // 3
    src = tmp_path / "in"
    src.mkdir()
    (src / "Magazine_Subscriptions.csv.gz").write_bytes(gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]))
    (src / "meta_Magazine_Subscriptions.json.gz").write_bytes(
        (magazine / "meta_Magazine_Subscriptions.json.gz").read_bytes()
    )
    args = ["convert", "--release", "2018", "--category", "Magazine_Subscriptions", "--name", "m"]
    assert main([*args, "--input", str(src), "--output", str(tmp_path / "a")]) == 0
    assert main([*args, "--input", str(magazine), "--output", str(tmp_path / "b")]) == 0
    a = (tmp_path / "a" / "m" / "m.inter").read_bytes()
    assert a == (tmp_path / "b" / "m" / "m.inter").read_bytes()
    assert len(io.BytesIO(a).readlines()) > 1
