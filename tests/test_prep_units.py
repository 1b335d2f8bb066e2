"""Small units: stream reading (gzip members, truncation, block edges), text cleaning, registry, filters."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from dataset_prep import filters, registry
from dataset_prep.errors import PrepError
from dataset_prep.streams import LineBlocks, verify_gzip
from dataset_prep.text import clean_text, is_valid_token, join_categories

LINES = [f"line {i} {'x' * (i % 37)}".encode() for i in range(2000)]


def read_all(path: Path, block_size: int) -> tuple[list[bytes], LineBlocks]:
    blocks = LineBlocks(path, block_size=block_size)
    got = [(b.first_line, b.data) for b in blocks]
    lines = []
    for first, data in got:
        assert data.endswith(b"\n")
        assert first == len(lines) + 1
        lines += data.splitlines()
    return lines, blocks


@pytest.mark.parametrize("block_size", [7, 1000, 1 << 20])
@pytest.mark.parametrize("kind", ["plain", "gzip", "members", "no-final-newline"])
def test_line_blocks(tmp_path: Path, block_size: int, kind: str) -> None:
    text = b"\n".join(LINES) + (b"" if kind == "no-final-newline" else b"\n")
    path = tmp_path / "f"
    if kind == "gzip":
        text = gzip.compress(text)
    elif kind == "members":
        text = b"".join(gzip.compress(b"\n".join(LINES[i : i + 300]) + b"\n") for i in range(0, 2000, 300))
    path.write_bytes(text)
    lines, blocks = read_all(path, block_size)
    assert lines == LINES and blocks.lines == 2000 and not blocks.truncated


def test_truncated_gzip_keeps_complete_lines(tmp_path: Path) -> None:
    whole = gzip.compress(b"\n".join(LINES) + b"\n")
    path = tmp_path / "t.gz"
    path.write_bytes(whole[: len(whole) * 2 // 3])
    lines, blocks = read_all(path, 4096)
    assert blocks.truncated and lines == LINES[: len(lines)] and 0 < len(lines) < 2000
    assert LINES[len(lines)].startswith(blocks.partial_tail)
    with pytest.raises(PrepError, match="truncated"):
        verify_gzip(path)
    (tmp_path / "ok.gz").write_bytes(whole)
    verify_gzip(tmp_path / "ok.gz")  # an intact file passes


def test_corrupt_gzip_and_missing_file(tmp_path: Path) -> None:
    whole = bytearray(gzip.compress(b"\n".join(LINES)))
    whole[-6] ^= 0xFF  # CRC
    (tmp_path / "c.gz").write_bytes(bytes(whole))
    with pytest.raises(PrepError, match="corrupt gzip"):
        read_all(tmp_path / "c.gz", 1 << 20)
    with pytest.raises(PrepError, match="file not found"):
        LineBlocks(tmp_path / "absent")
    (tmp_path / "plain.gz").write_bytes(b"not gzip\n")
    with pytest.raises(PrepError, match="not a gzip file"):
        verify_gzip(tmp_path / "plain.gz")


def test_clean_text() -> None:
    assert clean_text('<span class="a-size-medium a-color-secondary"') == ""
    assert clean_text("<p>Fish &amp; Chips</p>\t\r\nfor\u2028two") == "Fish & Chips for two"
    assert clean_text('"Quoted" start, a < b') == "'Quoted' start, a < b"
    assert clean_text(["one", "", ["two", 3]]) == "one two"
    assert clean_text(None) == "" and clean_text(5) == ""
    assert clean_text("word " * 50, max_len=22) == "word word word word"
    assert "\t" not in clean_text("a\x00\x1f\x7f\x85b")
    assert join_categories([["Beauty", "Skin"], ["Beauty", "Lips"], "Tools &amp; Kits"]) == (
        "Beauty, Skin, Lips, Tools & Kits"
    )
    every_space = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
    assert clean_text(f"a{every_space}b") == "a b"
    assert is_valid_token("B000123") and not is_valid_token("a b") and not is_valid_token('"x')


def test_registry() -> None:
    assert len(registry.CATEGORIES_2014) == 24 and len(set(registry.CATEGORIES_2014)) == 24
    assert len(registry.CATEGORIES_2018) == 29 and len(set(registry.CATEGORIES_2018)) == 29
    assert len(registry.CATEGORIES_2023) == 34 and registry.CATEGORIES_2023[-1] == "Unknown"
    entry = registry.parse_entry("magazine_subscriptions", "2018", None)
    assert entry.category == "Magazine_Subscriptions" and entry.source == "ratings"
    assert entry.interactions_path == "categoryFilesSmall/Magazine_Subscriptions.csv"
    assert entry.meta_path == "metaFiles2/meta_Magazine_Subscriptions.json.gz"
    assert entry.layout.item_col == 0  # 2018 CSV is item-first
    assert registry.parse_entry("2014:Beauty", None, None).layout.item_col == 1
    e23 = registry.parse_entry("2023:Unknown", None, None)
    assert e23.interactions_path == "review_categories/Unknown.jsonl.gz" and e23.layout.time_divisor == 1000
    with pytest.raises(PrepError, match="did you mean 'Video_Games'"):
        registry.parse_entry("Video_Game", "2023", None)
    with pytest.raises(PrepError, match="needs a release"):
        registry.parse_entry("Books", None, None)
    assert "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/" in registry.table(
        ["2023"], urls=True
    )


@pytest.mark.parametrize(
    "ts",
    [
        [3.0, 1.0, 2.0, 1.0, 5.0, 1.0],  # whole seconds: packed key
        [1600000000.2, 1600000000.0, 1600000000.1, 1600000000.0, 1.5, 1600000000.0],  # ms: packed key
        [0.25e-4, 0.0, 0.1e-4, 0.0, 9e-4, 0.0],  # sub-millisecond: two sorts
        [1e300, -1e300, 0.0, -1e300, 1e301, -1e300],  # does not fit 63 bits: two sorts
    ],
)
def test_user_time_order_matches_a_plain_stable_sort(ts: list[float]) -> None:
    user = np.array([1, 0, 1, 0, 0, 0], np.int32)
    expected = sorted(range(6), key=lambda i: (user[i], ts[i], i))
    assert filters.user_time_order(user, np.array(ts)).tolist() == expected


def test_dedup_matches_a_plain_python_rule() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    user = rng.integers(0, 30, n).astype(np.int32)
    item = rng.integers(0, 20, n).astype(np.int32)
    ts = rng.integers(0, 15, n).astype(np.float64)
    keep = rng.random(n) < 0.9
    order = filters.user_time_order(user, ts)
    for policy in ("first", "last"):
        best: dict[tuple[int, int], int] = {}
        for i in np.flatnonzero(keep).tolist():  # input order
            key = (int(user[i]), int(item[i]))
            j = best.get(key)
            if j is None or (ts[i] < ts[j] if policy == "first" else ts[i] >= ts[j]):
                best[key] = i
        mask = keep.copy()
        dropped = filters.duplicates(user, item, mask, order, policy)
        assert sorted(np.flatnonzero(mask).tolist()) == sorted(best.values())
        assert dropped == keep.sum() - len(best)


def test_filters_dedup_and_k_core() -> None:
    user = np.array([0, 0, 0, 1, 1, 2], np.int32)
    item = np.array([0, 0, 1, 0, 1, 2], np.int32)
    ts = np.array([5.0, 5.0, 1.0, 2.0, 3.0, 4.0])
    order = filters.user_time_order(user, ts)
    assert order.tolist() == [2, 0, 1, 3, 4, 5]
    keep = np.ones(6, bool)
    assert filters.duplicates(user, item, keep, order, "first") == 1
    assert keep.tolist() == [True, False, True, True, True, True]  # tie: the first in input order
    keep = np.ones(6, bool)
    assert filters.duplicates(user, item, keep, order, "last") == 1
    assert keep.tolist() == [False, True, True, True, True, True]
    ts[1] = 0.5  # now row 1 is the earliest of the pair
    keep = np.ones(6, bool)
    assert filters.duplicates(user, item, keep, filters.user_time_order(user, ts), "first") == 1
    assert keep.tolist() == [False, True, True, True, True, True]
    keep = np.ones(6, bool)
    assert filters.k_core(user, item, keep, (3, 3), 2, 2) == 1  # user 2 / item 2 go
    assert keep.tolist() == [True, True, True, True, True, False]
    keep = np.ones(6, bool)
    assert filters.time_range(ts, keep, 2.0, 5.0) == 3 and keep.tolist() == [
        False,
        False,
        False,
        True,
        True,
        True,
    ]
