"""Exact duplicate interactions (the same user, item and time, more than once) are dropped with one warning
that counts them, by every data path: RecBole's datasets for any model (run_recbole, srt-finetune) and
srt-prep convert. Repeats at other times are interactions of their own and stay."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import SLICES, tiny_config, write_tiny_dataset

from dataset_prep.cli import main as srt_prep
from dataset_prep.filters import exact_duplicate_rows
from recbole_srt.checks import load_dataset
from recbole_srt.pipeline import make_config

MAGAZINE = SLICES / "amazon2018-magazine-subscriptions"


def rewrite_inter(folder: Path, transform) -> int:
    """Replace the rows of ``folder/tiny.inter`` by ``transform(rows)``; the number of original rows."""
    header, *rows = (folder / "tiny.inter").read_text().splitlines()
    (folder / "tiny.inter").write_text("\n".join([header, *transform(rows)]) + "\n")
    return len(rows)


def loaded(root: Path, model: str):
    config = make_config(model, "tiny", [str(root / "tiny" / "tiny.yaml")], tiny_config(root))
    return load_dataset(config)


def test_the_definition_keeps_the_first_of_each_and_ignores_rows_without_a_time():
    users, items = ["u1", "u1", "u1", "u2", "u1", "u1", "u1"], ["a", "a", "a", "a", "b", "c", "c"]
    times = [1.0, 1.0, 2.0, 1.0, 1.0, np.nan, np.nan]
    assert exact_duplicate_rows(users, items, times).tolist() == [1]


@pytest.mark.parametrize("model", ["SRT", "SASRec"])
def test_recbole_datasets_drop_exact_duplicates_with_one_warning(tmp_path, caplog, model):
    folder = write_tiny_dataset(tmp_path)
    n = rewrite_inter(folder, lambda rows: [copy for row in rows for copy in (row, row)])
    with caplog.at_level(logging.WARNING):
        dataset = loaded(tmp_path, model)
    assert dataset.inter_num == n
    (warning,) = [r.getMessage() for r in caplog.records if "exact duplicate" in r.getMessage()]
    assert warning == (
        f"dataset tiny: {n} exact duplicate interactions (the same user, item and time as an earlier row) "
        "dropped, the first of each kept"
    )


@pytest.mark.parametrize(
    ("twin", "kept_per_row", "warned"),
    [
        (lambda user, item, rating, time: f"{user}\t{item}\t{6 - int(rating)}\t{time}", 1, True),
        (lambda user, item, rating, time: f"{user}\t{item}\t{rating}\t{float(time) + 0.5}", 2, False),
    ],
    ids=["another-rating-same-time", "a-repeat-at-another-time"],
)
def test_a_duplicate_is_its_user_item_and_time(tmp_path, caplog, twin, kept_per_row, warned):
    folder = write_tiny_dataset(tmp_path)
    n = rewrite_inter(folder, lambda rows: [line for row in rows for line in (row, twin(*row.split("\t")))])
    with caplog.at_level(logging.WARNING):
        dataset = loaded(tmp_path, "SRT")
    assert dataset.inter_num == kept_per_row * n
    assert ("exact duplicate" in caplog.text) == warned
    assert not warned or f"{n} exact duplicate interactions" in caplog.text


def convert(tmp_path: Path, name: str, lines: list[str]) -> tuple[list[str], dict]:
    """srt-prep convert --dedup all of Magazine ratings ``lines``: (the rows written, the report)."""
    source = tmp_path / f"in-{name}"
    source.mkdir()
    (source / "meta_Magazine_Subscriptions.json.gz").write_bytes(
        (MAGAZINE / "meta_Magazine_Subscriptions.json.gz").read_bytes()
    )
    (source / "Magazine_Subscriptions.csv").write_text("\n".join(lines) + "\n")
    args = ["convert", "--category", "2018:Magazine_Subscriptions", "--input", str(source), "--output",
            str(tmp_path / "out"), "--name", name, "--dedup", "all", "--min-user-inter", "1",
            "--min-item-inter", "1"]  # fmt: skip
    assert srt_prep(args) == 0
    folder = tmp_path / "out" / name
    return folder.joinpath(f"{name}.inter").read_text().splitlines()[1:], json.loads(
        folder.joinpath("report.json").read_text()
    )


def test_srt_prep_dedup_all_drops_exact_duplicates_and_keeps_repeats(tmp_path, capsys):
    lines = gzip.decompress((MAGAZINE / "Magazine_Subscriptions.csv.gz").read_bytes()).decode().splitlines()
    item, user, rating, time = lines[0].split(",")
    repeat = f"{item},{user},{rating},{int(time) + 86400}"  # the same pair a day later: a repeat
    once, once_report = convert(tmp_path, "once", [*lines, repeat])
    twice, report = convert(tmp_path, "twice", [*lines, repeat, *lines])
    assert twice == once and len(set(twice)) == len(twice)  # no exact duplicate written; the repeat stays
    assert sum(row.split("\t")[:2] == [user, item] for row in twice) == 2
    n = report["dropped"]["duplicate"]
    # a row kept c times apart from its exact duplicates (c - 1 dropped) now comes 2c times: 2c - 1 dropped;
    # the repeat comes once in both
    assert n == 2 * once_report["dropped"]["duplicate"] + len(once) - 1
    warning = (
        f"{n:,} exact duplicate interactions (the same user, item and time as an earlier row) dropped, the "
        "first of each kept (--dedup all keeps repeats at other times)"
    )
    assert warning in report["warnings"] and warning in capsys.readouterr().err
