"""Item-text encoding: items/s of each ItemEncoder option against plain encode, in one run, and the
time to load a million items' vectors from the store.

::

    python benchmarks/encode.py --item-file data/scientific/scientific.item --sample 2000 --rounds 2 \
        --out results/encode
    python benchmarks/encode.py --store-items 1000000 --out results/encode    # the store-load part only

Speed: every cell encodes the same ``--sample`` texts, the cells interleaved in ``--rounds`` rounds
after one warm-up call each (model load, ONNX export); a cell keeps its median round. Fidelity: cosine
similarity of each cell's vectors to plain encode's. (SRT's quality with each option is training's
question: ``benchmarks/compare.py`` with ``benchmarks/grids/encoders.yaml``.)

Store load: ``--store-items`` synthetic texts with random 384-dim vectors are stored as SRT's first load
stores them; a fresh process then gets their features as SRT does (:meth:`VectorStore.vectors` with
``padding_row``: a memory map) and reads them once, beside loading the same matrix as one plain
``.npy`` with its SHA-256 (the per-dataset cache before the store) and copying it into fresh memory.

Writes ``speed.csv``, ``store.json``, ``encode.md`` and ``encode_speed.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tabulate import tabulate

from recbole_srt.catalog import ItemFeatureError, read_item_texts
from recbole_srt.encoder import ItemEncoder
from recbole_srt.store import VectorStore

PLAIN = "plain encode (torch fp32)"
CELLS: dict[str, dict] = {
    PLAIN: {},
    "token cap 64": {"max_tokens": 64},
    "token cap 32": {"max_tokens": 32},
    "bf16 weights": {"precision": "bf16"},
    "2 processes": {"processes": 2},
    "onnx": {"backend": "onnx"},
    "onnx-int8": {"backend": "onnx-int8"},
    "onnx-int8, cap 64": {"backend": "onnx-int8", "max_tokens": 64},
    "onnx-int8, cap 48": {"backend": "onnx-int8", "max_tokens": 48},
    "onnx-int8, cap 32": {"backend": "onnx-int8", "max_tokens": 32},
}


def speed(texts: list[str], cells: list[str], rounds: int, cache_dir: Path, batch_size: int) -> pd.DataFrame:
    """One row per cell: median seconds and items/s over ``rounds``, cosine to plain encode (the first)."""
    cells = [PLAIN, *(cell for cell in cells if cell != PLAIN)]
    encoders = {
        name: ItemEncoder(batch_size=batch_size, cache_dir=cache_dir, **CELLS[name]) for name in cells
    }
    for encoder in encoders.values():
        encoder.encode(texts[:64])  # warm-up: load the model, export ONNX once
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    vectors: dict[str, np.ndarray] = {}
    for round_ in range(rounds):
        for name, encoder in encoders.items():
            start = time.perf_counter()
            vectors[name] = encoder.encode(texts)
            seconds[name].append(time.perf_counter() - start)
            rate = len(texts) / seconds[name][-1]
            print(f"round {round_ + 1}/{rounds} {name}: {rate:.1f} items/s", flush=True)
    rows = []
    for name, times in seconds.items():
        a, b = vectors[name], vectors[PLAIN]
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        median = statistics.median(times)
        rows.append({
            "cell": name,
            "settings": json.dumps(CELLS[name]),
            "s": round(median, 2),
            "items_per_s": round(len(texts) / median, 1),
            "speedup": round(statistics.median(seconds[PLAIN]) / median, 2),
            "cosine_mean": round(float(cosine.mean()), 5),
            "cosine_min": round(float(cosine.min()), 5),
        })  # fmt: skip
    return pd.DataFrame(rows)


_LOAD = """
import json, sys, time, numpy as np, torch
from recbole_srt.store import VectorStore
folder, n = sys.argv[1], int(sys.argv[2])
texts = [f"item {i}: a product title, with its brand" for i in range(n)]
start = time.perf_counter(); store = VectorStore(folder); opened = time.perf_counter()
features = torch.from_numpy(store.vectors(texts, lambda new: 1 / 0, padding_row=True))  # what SRT gets
done = time.perf_counter()
first_sum = float(features.sum()); touched = time.perf_counter()  # the first pass reads the pages
start_npy = time.perf_counter(); plain = np.load(folder + "/../plain.npy"); loaded = time.perf_counter()
import hashlib; hashlib.sha256(plain.data).hexdigest(); hashed = time.perf_counter()
start_take = time.perf_counter(); gathered = np.take(plain, np.arange(n), axis=0); taken = time.perf_counter()
assert np.array_equal(features.numpy()[1:], plain) and not features[0].any()
print(json.dumps({"store_open_s": opened - start, "store_hash_and_map_s": done - opened,
                  "store_total_s": done - start, "first_pass_over_features_s": touched - done,
                  "plain_npy_load_s": loaded - start_npy, "plain_npy_load_and_sha256_s": hashed - start_npy,
                  "copy_into_fresh_memory_s": taken - start_take}))
"""


def store_load(n: int, dim: int = 384) -> dict:
    """Seconds to load ``n`` items' vectors from a store in a fresh process (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="srt-store-bench-") as tmp:
        folder = Path(tmp) / "store"
        texts = [f"item {i}: a product title, with its brand" for i in range(n)]
        matrix = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
        VectorStore(folder).vectors(texts, lambda new: matrix, padding_row=True)  # as a first SRT load
        np.save(Path(tmp) / "plain.npy", matrix)
        out = subprocess.run(
            [sys.executable, "-c", _LOAD, str(folder), str(n)], capture_output=True, text=True
        )
        if out.returncode:
            raise SystemExit(out.stderr)
        return {"items": n, "dim": dim, **{k: round(v, 3) for k, v in json.loads(out.stdout).items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--item-file", type=Path, help="a RecBole .item file whose texts are encoded")
    p.add_argument("--sample", type=int, default=2000, help="texts per cell and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS), help="cells to time")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--store-items", type=int, default=0, help="also time loading this many items' vectors")
    p.add_argument("--out", type=Path, default=Path("results/encode"))
    args = p.parse_args(argv)
    if min(args.sample, args.rounds, args.batch_size) < 1 or args.store_items < 0:
        p.error("--sample, --rounds and --batch-size must be at least 1, --store-items at least 0")
    try:
        texts = read_item_texts(args.item_file, "item_id").texts if args.item_file else []
    except ItemFeatureError as error:
        p.exit(2, f"encode: error: {error}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    report = []
    if args.item_file:
        texts = random.Random(0).sample(texts, min(args.sample, len(texts)))
        with tempfile.TemporaryDirectory(prefix="srt-encode-bench-") as cache:
            table = speed(texts, args.cells, args.rounds, Path(cache), args.batch_size)
        table.to_csv(args.out / "speed.csv", index=False)
        report.append(f"{len(texts)} texts of {args.item_file}, median of {args.rounds} rounds\n")
        report.append(
            tabulate(table.drop(columns="settings"), headers="keys", tablefmt="github", showindex=False)
        )
        fig = Figure(figsize=(7, 3.5))
        ax = fig.subplots()
        ax.barh(table["cell"], table["items_per_s"])
        ax.invert_yaxis()
        ax.set_xlabel("items/s")
        ax.set_title(f"encoding {len(texts)} item texts ({args.item_file.stem})")
        fig.tight_layout()
        fig.savefig(args.out / "encode_speed.png", dpi=120)
    if args.store_items:
        load = store_load(args.store_items)
        (args.out / "store.json").write_text(json.dumps(load, indent=2))
        report.append(tabulate([load], headers="keys", tablefmt="github"))
    text = "\n\n".join(report) + "\n"
    (args.out / "encode.md").write_text(text)
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
