"""Cut the small real slices in ``tests/data/`` from the full public files (a maintainer's tool).

    RECBOLE_SRT_TEST_DATA=PATH/TO/data python tests/data/make_slices.py

``PATH/TO/data`` holds the folders named below, laid out as their publishers ship them
(``tests/data/README.md`` lists the sources). The cut is deterministic: the same inputs give the same
slices, byte for byte. Nothing is synthesised: every line of a slice is a line of the full file, in its
order; the only change is where a file ends.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import sys
import zlib
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAGAZINE = "amazon2018-magazine-subscriptions"
MUSIC = "amazon2014-digital-music-truncated"
SCIENTIFIC = "scientific-unisrec"


def gzip_bytes(data: bytes) -> bytes:
    """``data`` gzipped with a fixed header (no file name, mtime 0), so the slice is reproducible."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as f:
        f.write(data)
    return out.getvalue()


def complete_lines(path: Path) -> list[bytes]:
    """The complete lines of a gzip file whose stream may end abruptly (the partial tail dropped)."""
    data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(path.read_bytes())
    return data.split(b"\n")[:-1]


def truncated_gzip(lines: list[bytes], tail: bytes) -> bytes:
    """``lines`` then the start of ``tail``, gzipped and cut off mid-stream as the published 2014 files are.

    The cut is the shortest prefix of the stream that still yields every line of ``lines``: the reader
    sees those lines, then a partial line, then the stream ends without its trailer.
    """
    whole = gzip_bytes(b"\n".join([*lines, tail]) + b"\n")
    needed = len(b"\n".join(lines)) + 1

    def decoded(cut: int) -> int:
        return len(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(whole[:cut]))

    low, high = 0, len(whole) - 8  # the smallest cut that yields more than ``lines``: mid-way into ``tail``
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if decoded(middle) <= needed else (low, middle)
    if decoded(low) >= needed + len(tail):
        raise RuntimeError("the tail line is too short to cut the stream inside it")
    return whole[:low]


def five_core_users(ratings: list[bytes], with_metadata: set[bytes]) -> set[bytes]:
    """Users of the iterative 5-core of the (user, item) pairs whose item has metadata (as srt-prep does)."""
    pairs = {(line.split(b",")[1], line.split(b",")[0]) for line in ratings}
    pairs = {(user, item) for user, item in pairs if item in with_metadata}
    while True:
        users, items = Counter(u for u, _ in pairs), Counter(i for _, i in pairs)
        kept = {(u, i) for u, i in pairs if users[u] >= 5 and items[i] >= 5}
        if kept == pairs:
            return {u for u, _ in kept}
        pairs = kept


def slice_magazine(source: Path, target: Path, share: float = 0.1, seed: int = 0) -> None:
    """Every rating of a seeded ``share`` of the users and of every user in the full file's 5-core, and
    the metadata lines of their items (duplicates kept): the slice's 5-core is the full file's."""
    ratings = gzip.decompress((source / "Magazine_Subscriptions.csv.gz").read_bytes()).split(b"\n")[:-1]
    meta = gzip.decompress((source / "meta_Magazine_Subscriptions.json.gz").read_bytes()).split(b"\n")[:-1]
    with_metadata = {json.loads(line)["asin"].encode() for line in meta}
    users = sorted({line.split(b",")[1] for line in ratings})
    chosen = set(random.Random(seed).sample(users, round(share * len(users))))
    chosen |= five_core_users(ratings, with_metadata)
    kept = [line for line in ratings if line.split(b",")[1] in chosen]
    items = {line.split(b",", 1)[0] for line in kept}
    kept_meta = [line for line in meta if json.loads(line)["asin"].encode() in items]
    (target / "Magazine_Subscriptions.csv.gz").write_bytes(gzip_bytes(b"\n".join(kept) + b"\n"))
    (target / "meta_Magazine_Subscriptions.json.gz").write_bytes(gzip_bytes(b"\n".join(kept_meta) + b"\n"))


def slice_music(source: Path, target: Path, reviews: int = 700, other_meta: int = 150) -> None:
    """The first ``reviews`` review lines; the metadata lines of their items and ``other_meta`` more."""
    review_lines = complete_lines(source / "reviews_Digital_Music_5.json.gz")
    kept = review_lines[:reviews]
    asins = {json.loads(line)["asin"] for line in kept}
    meta_lines = complete_lines(source / "meta_Digital_Music.json.gz")
    # 2014 metadata is Python literals: find the asin by its key, never by evaluating the line
    meta_asin = [line.split(b"'asin': '", 1)[1].split(b"'", 1)[0].decode() for line in meta_lines]
    kept_meta, others = [], 0
    for line, asin in zip(meta_lines, meta_asin, strict=True):
        if asin in asins or others < other_meta:
            others += asin not in asins
            kept_meta.append(line)
    next_meta = meta_lines[meta_lines.index(kept_meta[-1]) + 1]
    (target / "reviews_Digital_Music_5.json.gz").write_bytes(truncated_gzip(kept, review_lines[reviews]))
    (target / "meta_Digital_Music.json.gz").write_bytes(truncated_gzip(kept_meta, next_meta))


def slice_scientific(source: Path, target: Path, users: int = 800) -> None:
    """The first ``users`` users (all three splits), the whole index files, the text of their items."""
    used = set()
    for split in ("train", "valid", "test"):
        lines = (source / f"Scientific.{split}.inter").read_text(encoding="utf-8").splitlines()
        kept = [lines[0]] + [line for line in lines[1:] if int(line.split("\t", 1)[0]) < users]
        for line in kept[1:]:
            _, history, item = line.split("\t")
            used.update(int(i) for i in [*history.split(), item])
        (target / f"Scientific.{split}.inter").write_text("\n".join(kept) + "\n", encoding="utf-8")
    user_lines = (source / "Scientific.user2index").read_text(encoding="utf-8").splitlines()
    (target / "Scientific.user2index").write_text("\n".join(user_lines[:users]) + "\n", encoding="utf-8")
    item_lines = (source / "Scientific.item2index").read_text(encoding="utf-8").splitlines()
    (target / "Scientific.item2index").write_text("\n".join(item_lines) + "\n", encoding="utf-8")
    asins = {item_lines[i].split("\t")[0] for i in used}
    text = (source / "Scientific.text").read_text(encoding="utf-8").splitlines()
    kept_text = [text[0]] + [line for line in text[1:] if line.split("\t", 1)[0] in asins]
    (target / "Scientific.text").write_text("\n".join(kept_text) + "\n", encoding="utf-8")


def main() -> int:
    root = os.environ.get("RECBOLE_SRT_TEST_DATA")
    if not root:
        print(
            "make_slices: error: set RECBOLE_SRT_TEST_DATA to the folder of the full files", file=sys.stderr
        )
        return 2
    for name, cut in ((MAGAZINE, slice_magazine), (MUSIC, slice_music), (SCIENTIFIC, slice_scientific)):
        (HERE / name).mkdir(exist_ok=True)
        cut(Path(root) / name, HERE / name)
        size = sum(p.stat().st_size for p in (HERE / name).iterdir())
        print(f"{name}: {size / 1e3:,.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
