"""Small units: stream reading (gzip members, truncation, block edges), text cleaning, registry, and the
engine's interning and filters against plain-Python rules."""

from __future__ import annotations

import gzip
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dataset_prep import filters, registry
from dataset_prep.engine import Engine
from dataset_prep.errors import PrepError
from dataset_prep.readers import Chunk
from dataset_prep.streams import LineBlocks, verify_gzip
from dataset_prep.table import Interactions
from dataset_prep.text import TOKEN_BREAKERS, clean_text, join_categories

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


def test_clean_text_drops_invisible_characters() -> None:
    """Zero-width and bidirectional control characters (a title shown reversed by U+202E) are removed, also
    when they come from an entity; ZWJ stays (it shapes scripts and emoji)."""
    assert clean_text("Safe\u200b title \u202eevil\u202c") == "Safe title evil"
    assert clean_text("&#8203;a\u2066b\u2069\ufeff\u200e\u00ad") == "ab"
    assert clean_text(["\u200b", "\u202e"]) == ""
    assert clean_text("\u0915\u094d\u200d\u0937") == "\u0915\u094d\u200d\u0937"


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
    controls = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]]
    assert set(TOKEN_BREAKERS) == {*every_space, *controls, '"'}


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
    assert (
        e23.interactions_path == "raw/review_categories/Unknown.jsonl.gz" and e23.layout.time_divisor == 1000
    )
    assert e23.interactions_file == "Unknown.jsonl.gz" and e23.meta_file == "meta_Unknown.jsonl.gz"
    bench = registry.parse_entry("2023:All_Beauty:5core", None, None)
    assert bench.interactions_path == "benchmark/5core/rating_only/All_Beauty.csv.gz"
    assert bench.interactions_file == "All_Beauty.5core.csv.gz" and bench.layout.header[1] == "parent_asin"
    assert registry.parse_entry("2014:Books:reviews", None, None).interactions_file == "reviews_Books.json.gz"
    with pytest.raises(PrepError, match="did you mean 'Video_Games'"):
        registry.parse_entry("Video_Game", "2023", None)
    with pytest.raises(PrepError, match="needs a release"):
        registry.parse_entry("Books", None, None)
    assert "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/" in registry.table(
        ["2023"], urls=True
    )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine("256MB", tmp_path) as engine:
        yield engine


def filtered(
    engine: Engine,
    rows: list[tuple[str, str, float, float]],
    criteria: filters.Criteria | None = None,
    dedup: str = "all",
    k: tuple[int, int] = (0, 0),
    excluded: tuple[str, ...] = (),
    without_meta: tuple[str, ...] = (),
) -> list[tuple[int, float]]:
    """Run the filters on ``rows`` (user, item, rating, time); the kept rows as (input position, time), in
    output order."""
    inter = Interactions(engine)
    users, items, ratings, times = zip(*rows, strict=True)
    chunk = Chunk.of(pa.array(users), pa.array(items), np.array(ratings), np.array(times))
    inter.add(chunk)
    inter.add(chunk.where(np.zeros(len(rows), bool)))  # an empty chunk changes nothing
    inter.intern()
    engine.run(
        f"""CREATE OR REPLACE TABLE users AS SELECT *, token IN {(*excluded, "")} AS excluded FROM users;
        CREATE OR REPLACE TABLE items AS SELECT *, token NOT IN {(*without_meta, "")} AS has_meta,
            true AS has_text FROM items"""
    )
    criteria = criteria or filters.Criteria(None, None, None, False, False)
    engine.start(filters.stage_rows(criteria, dedup)).result()
    filters.apply_metadata(engine, criteria)
    filters.duplicates(engine, dedup)
    filters.k_core(engine, *k)
    users_by_code = [u for u, _ in engine.rows("SELECT token, code FROM users ORDER BY code")]
    items_by_code = [i for i, _ in engine.rows("SELECT token, code FROM items ORDER BY code")]
    kept = engine.rows(filters.KEPT_ROWS.replace("SELECT uc, ic, rating, ts", "SELECT uc, ic, rating, ts, r"))
    assert all(rows[r] == (users_by_code[uc], items_by_code[ic], rating, t) for uc, ic, rating, t, r in kept)
    return [(r, t) for _, _, _, t, r in kept]


@pytest.mark.parametrize(
    "ts",
    [
        [3.0, 1.0, 2.0, 1.0, 5.0, 1.0],  # whole seconds
        [1600000000.2, 1600000000.0, 1600000000.1, 1600000000.0, 1.5, 1600000000.0],  # milliseconds
        [0.25e-4, 0.0, 0.1e-4, 0.0, 9e-4, 0.0],  # sub-millisecond
        [1e300, -1e300, 0.0, -1e300, 1e301, -1e300],
    ],
)
def test_output_order_is_user_first_appearance_then_time_then_input(engine: Engine, ts: list[float]) -> None:
    users = ["u1", "u0", "u1", "u0", "u0", "u0"]
    rows = [(u, f"i{n}", 5.0, t) for n, (u, t) in enumerate(zip(users, ts, strict=True))]
    first = {u: users.index(u) for u in users}
    expected = sorted(range(6), key=lambda n: (first[users[n]], ts[n], n))
    assert [r for r, _ in filtered(engine, rows)] == expected


def test_dedup_matches_a_plain_python_rule(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 3000
    user = rng.integers(0, 30, n)
    item = rng.integers(0, 20, n)
    ts = rng.integers(0, 15, n).astype(np.float64)
    rating = np.where(rng.random(n) < 0.9, 5.0, 1.0)  # --min-rating 2 drops a tenth
    rows = [(f"u{u}", f"i{i}", float(r), float(t)) for u, i, r, t in zip(user, item, rating, ts, strict=True)]
    criteria = filters.Criteria(None, None, 2.0, False, False)
    for policy in ("first", "last"):
        best: dict[tuple[int, int], int] = {}
        for i in np.flatnonzero(rating > 2).tolist():  # input order
            key = (int(user[i]), int(item[i]))
            j = best.get(key)
            if j is None or (ts[i] < ts[j] if policy == "first" else ts[i] >= ts[j]):
                best[key] = i
        with Engine("256MB", tmp_path) as engine:
            kept = filtered(engine, rows, criteria, policy)
            assert sorted(r for r, _ in kept) == sorted(best.values())
            assert engine.one("SELECT count(*) FROM losers")[0] == (rating > 2).sum() - len(best)


def test_k_core_matches_a_plain_python_rule(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rows = [(f"u{u}", f"i{i}", 5.0, float(t)) for t, (u, i) in enumerate(rng.integers(0, 40, (400, 2)))]
    for k in [(2, 2), (3, 5), (5, 1), (0, 4)]:
        left = list(range(len(rows)))
        while True:
            users = Counter(rows[n][0] for n in left)
            items = Counter(rows[n][1] for n in left)
            kept = [n for n in left if users[rows[n][0]] >= k[0] and items[rows[n][1]] >= k[1]]
            if kept == left:
                break
            left = kept
        with Engine("256MB", tmp_path) as engine:
            assert sorted(r for r, _ in filtered(engine, rows, k=k)) == left


def test_filters_time_range_and_duplicate_ties(engine: Engine) -> None:
    rows = [("u0", "i0", 5.0, 5.0), ("u0", "i0", 5.0, 5.0), ("u0", "i1", 5.0, 1.0), ("u1", "i0", 5.0, 2.0)]
    rows += [("u1", "i1", 5.0, 3.0), ("u2", "i2", 5.0, 4.0)]
    assert filtered(engine, rows, dedup="first") == [(2, 1.0), (0, 5.0), (3, 2.0), (4, 3.0), (5, 4.0)]
    summary = filters.summarise(engine)
    assert summary.times == (1.0, 5.0) and summary.ratings == (5.0, 5.0)


def test_time_range_keeps_start_drops_end(engine: Engine) -> None:
    rows = [("u0", f"i{n}", 5.0, float(t)) for n, t in enumerate([1, 2, 3, 4, 5])]
    kept = filtered(engine, rows, filters.Criteria(2.0, 5.0, None, False, False))
    assert [t for _, t in kept] == [2.0, 3.0, 4.0]
    assert filters.summarise(engine).dropped["time_range"] == 2


def test_ids_that_cannot_be_recbole_tokens(engine: Engine) -> None:
    tokens = ["B000123", "a b", '"x', "a\u00a0b", "x\x00y", "ok\u2028", "caf\u00e9", "tab\t"]
    rows = [(t, "i", 5.0, 1.0) for t in tokens]
    filtered(engine, rows)
    ok = dict(engine.rows("SELECT token, ok FROM users"))
    assert ok == {t: t in ("B000123", "caf\u00e9") for t in tokens}
    assert filters.summarise(engine).dropped["malformed_line"] == len(tokens) - 2


def test_missing_metadata_comes_before_excluded_users(engine: Engine) -> None:
    rows = [("u0", "i0", 5.0, 1.0), ("u0", "i1", 5.0, 2.0), ("u1", "i1", 5.0, 3.0), ("u1", "i2", 1.0, 4.0)]
    criteria = filters.Criteria(None, None, 2.0, True, False)
    kept = filtered(engine, rows, criteria, excluded=("u0",), without_meta=("i1", "i2"))
    assert kept == []
    dropped = filters.summarise(engine).dropped
    assert (
        dropped["rating_threshold"] == 1
        and dropped["missing_metadata"] == 2
        and dropped["excluded_user"] == 1
    )


def test_ctrl_c_inside_an_engine_query_is_an_interrupt(tmp_path: Path) -> None:
    """DuckDB turns SIGINT during a query into its own exception; the CLI must see a KeyboardInterrupt
    (exit 130, "interrupted"), not an internal error."""
    with Engine("256MB", tmp_path) as engine:
        timer = threading.Timer(0.3, engine.con.interrupt)  # what DuckDB's SIGINT handler does
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            engine.rows("SELECT count(*) FROM range(100000000000) a WHERE a.range % 7 = 3")
        timer.join()
