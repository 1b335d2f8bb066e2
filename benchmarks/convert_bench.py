"""Throughput and peak memory of ``srt-prep convert`` on synthetic 2018-format ratings (a table, not a test).

    python benchmarks/convert_bench.py                      # 1M and 10M rows, 200k users, 50k items
    python benchmarks/convert_bench.py --rows 100000 --users 20000 --items 5000

For each size it writes ``<Cat>.csv`` (2018 layout: item,user,rating,timestamp, no header) plus a gzipped
``meta_<Cat>.json.gz`` for every item, then measures, each in a fresh process (peak RSS = that process's
``ru_maxrss``): the full ``convert`` (read, intern, metadata, dedup, 5-core, sort, write), a plain
``pandas.read_csv`` of the same file, and a process that only imports the converter (the floor).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CATEGORY = "Books"


def generate(folder: Path, rows: int, users: int, items: int, seed: int = 0) -> Path:
    """Synthetic ratings (popularity-skewed items, uniform users) and metadata for every item."""
    import gzip

    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / f"{CATEGORY}.csv"
    rng = np.random.default_rng(seed)
    item_tokens = pa.array([f"B{i:09d}" for i in range(items)])
    user_tokens = pa.array([f"A{u:013d}" for u in range(users)])
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    popularity /= popularity.sum()
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with open(csv_path, "wb") as out:
        for start in range(0, rows, 1 << 20):
            n = min(1 << 20, rows - start)
            table = pa.table(
                {
                    "item": item_tokens.take(pa.array(rng.choice(items, n, p=popularity))),
                    "user": user_tokens.take(pa.array(rng.integers(0, users, n))),
                    "rating": pa.array(rng.integers(1, 6, n).astype(np.float64)),
                    "timestamp": pa.array(rng.integers(946684800, 1538352000, n)),
                }
            )
            pacsv.write_csv(table, out, options)
    with gzip.open(folder / f"meta_{CATEGORY}.json.gz", "wt", encoding="utf-8", compresslevel=1) as meta:
        for i in range(items):
            record = {
                "asin": f"B{i:09d}",
                "title": f"Synthetic book {i}",
                "brand": f"Publisher {i % 997}",
                "category": ["Books", f"Genre {i % 31}"],
                "description": [f"A synthetic description of item {i}."],
                "also_buy": [f"B{(i * 7 + k) % items:09d}" for k in range(10)],
            }
            meta.write(json.dumps(record) + "\n")
    return csv_path


def worker(kind: str, folder: Path) -> dict:
    """Run one measurement in this process; returns seconds and peak RSS."""
    start = time.perf_counter()
    if kind == "convert":
        from dataset_prep.convert import ConvertOptions, convert
        from dataset_prep.registry import parse_entry

        report = convert(
            ConvertOptions(
                entries=[parse_entry(f"2018:{CATEGORY}", None, None)],
                inputs=[folder],
                output=folder / "out",
                name="bench",
                force=True,
            )
        )
        extra = {"kept": report["rows"]["kept"], "read": report["rows"]["read"]}
    elif kind == "pandas":
        import pandas as pd

        frame = pd.read_csv(folder / f"{CATEGORY}.csv", header=None, names=["item", "user", "rating", "ts"])
        extra = {"read": len(frame)}
    else:  # the floor: the modules convert imports, nothing read
        import dataset_prep.convert  # noqa: F401

        extra = {}
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": usage.ru_maxrss / 1024, **extra}


def measure(kind: str, folder: Path) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--folder", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--worker", choices=["convert", "pandas", "imports"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.folder)))
        return

    print(
        f"synthetic 2018 ratings CSV: {args.users:,} users, {args.items:,} items; a fresh process per cell;"
    )
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; CPU s: user + system, all threads\n"
    )
    print("| rows | what | seconds | rows/s | CPU s | peak RSS MiB | rows kept |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="convert_bench_") as tmp:
        floor = measure("imports", Path(tmp))
        seconds, cpu, rss = floor["seconds"], floor["cpu_seconds"], floor["peak_rss_mib"]
        print(f"| 0 | import the converter only (floor) | {seconds:.2f} | | {cpu:.1f} | {rss:.0f} | |")
        for rows in args.rows:
            folder = Path(tmp) / f"r{rows}"
            csv_path = generate(folder, rows, args.users, args.items)
            size = csv_path.stat().st_size / 2**20
            for kind, label in (
                ("convert", "srt-prep convert, end to end"),
                ("pandas", "pandas.read_csv only"),
            ):
                result = measure(kind, folder)
                kept = f"{result['kept']:,}" if "kept" in result else ""
                print(
                    f"| {rows:,} | {label} ({size:.0f} MiB CSV) | {result['seconds']:.2f} | "
                    f"{rows / result['seconds']:,.0f} | {result['cpu_seconds']:.1f} | "
                    f"{result['peak_rss_mib']:.0f} | {kept} |",
                    flush=True,
                )
            for path in folder.iterdir():
                if path.is_file():
                    path.unlink()


if __name__ == "__main__":
    main()
