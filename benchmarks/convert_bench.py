"""Throughput and peak memory of ``srt-prep convert``, before and after the out-of-core engine (a table, not a
test), on synthetic 2018-format ratings.

    python benchmarks/convert_bench.py                       # 10M and 40M rows
    python benchmarks/convert_bench.py --rows 1000000 --memory-limit 1GB

For each size it writes ``Books.csv`` (2018 layout: item,user,rating,timestamp, no header) with Zipf item
popularity (rank ** -zipf), uniform users and times, and a gzipped ``meta_Books.json.gz`` for every item.
Users and items scale with the rows (1.5M users and 200k items at 40M rows). It then runs, each in a fresh
process, ``convert`` with default options (dedup first, 5-core) twice: "before" is the in-memory converter
of commit ``--before`` (its ``dataset_prep`` extracted from git into a temporary folder), "after" the one in
this checkout. Peak RSS is that process image's own (``VmHWM``; ``ru_maxrss`` would carry over the
launcher's peak across ``exec``); CPU seconds are user + system, all threads. The two
outputs must be byte-identical. Last, the cost of 233M rows (all of Amazon 2018) is extrapolated from the
measured points.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CATEGORY = "Books"
BEFORE = "561f223"  # the last commit with the in-memory converter
USERS_PER_ROW = 1_500_000 / 40_000_000
ITEMS_PER_ROW = 200_000 / 40_000_000
FULL_AMAZON_2018 = 233_100_000


def generate(folder: Path, rows: int, users: int, items: int, zipf: float, seed: int = 0) -> Path:
    """The ratings CSV and the metadata of every item."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / f"{CATEGORY}.csv"
    rng = np.random.default_rng(seed)
    item_tokens = pa.array([f"B{i:09d}" for i in range(items)])
    user_tokens = pa.array([f"A{u:013d}" for u in range(users)])
    popularity = 1.0 / np.arange(1, items + 1) ** zipf
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


def worker(folder: Path, out: Path, memory_limit: str | None) -> dict:
    """Run ``convert`` in this process (``dataset_prep`` as found on the path); time, CPU, peak RSS."""
    from dataset_prep.convert import ConvertOptions, convert
    from dataset_prep.registry import parse_entry

    engine = {} if memory_limit is None else {"memory_limit": memory_limit}
    start = time.perf_counter()
    report = convert(
        ConvertOptions(
            entries=[parse_entry(f"2018:{CATEGORY}", None, None)],
            inputs=[folder],
            output=out,
            name="bench",
            force=True,
            **engine,
        )
    )
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    digests = {
        suffix: hashlib.sha256((out / "bench" / f"bench.{suffix}").read_bytes()).hexdigest()
        for suffix in ("inter", "item")
    }
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": peak_rss_mib(usage),
        "kept": report["rows"]["kept"],
        "read": report["rows"]["read"],
        "sha256": digests,
    }


def peak_rss_mib(usage: resource.struct_rusage) -> float:
    """This process image's peak resident memory: Linux's ``VmHWM``, else ``ru_maxrss`` (which on Linux
    keeps the peak of the process that forked it)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return usage.ru_maxrss / 1024


def measure(code: Path, folder: Path, memory_limit: str | None) -> dict:
    """One conversion in a fresh process importing ``dataset_prep`` from ``code``."""
    out = folder / "out"
    command = [sys.executable, __file__, "--worker", "--folder", str(folder), "--out", str(out)]
    if memory_limit is not None:
        command += ["--memory-limit", memory_limit]
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder)
    if done.returncode:
        sys.exit(f"convert_bench: the conversion with {code} failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(out)
    return json.loads(done.stdout.strip().splitlines()[-1])


def old_code(commit: str, into: Path) -> Path:
    """``dataset_prep`` as of ``commit``, extracted from git into ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "dataset_prep"], capture_output=True
    )
    if archive.returncode:
        sys.exit(f"convert_bench: cannot read commit {commit} from git: {archive.stderr.decode().strip()}")
    into.mkdir(parents=True)
    with tempfile.TemporaryFile() as tar:
        tar.write(archive.stdout)
        tar.seek(0)
        with tarfile.open(fileobj=tar) as files:
            files.extractall(into, filter="data")
    return into


def fit(points: list[tuple[int, float]], at: int) -> float:
    """The value at ``at`` of the line through the first and last measured points."""
    (x0, y0), (x1, y1) = points[0], points[-1]
    return y1 if x1 == x0 else y0 + (y1 - y0) * (at - x0) / (x1 - x0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[10_000_000, 40_000_000])
    p.add_argument("--zipf", type=float, default=1.0, help="item popularity exponent (default 1)")
    p.add_argument("--before", default=BEFORE, help=f"commit of the 'before' converter (default {BEFORE})")
    p.add_argument("--memory-limit", help="the new converter's --memory-limit (default: its default)")
    p.add_argument("--tmp", type=Path, help="folder for the data (default: the system's temporary folder)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.folder, args.out, args.memory_limit)))
        return

    # this checkout's, imported only here: a worker imports the converter it measures
    from dataset_prep.engine import check_memory_limit
    from dataset_prep.errors import PrepError

    if min(args.rows) < 1 or not math.isfinite(args.zipf) or args.zipf < 0:
        p.error("--rows must be at least 1 and --zipf a finite number >= 0")
    if args.memory_limit:
        try:
            check_memory_limit(args.memory_limit)
        except PrepError as error:
            p.error(str(error))
    if args.tmp is not None:
        if not args.tmp.is_dir():
            p.error(f"--tmp {args.tmp}: no such folder")
        args.tmp = args.tmp.resolve()  # the workers run in their own folders
    limit = args.memory_limit or "default"
    print(
        f"synthetic 2018 ratings CSV, Zipf({args.zipf:g}) items, uniform users; convert with default options;"
    )
    print(f"before: the in-memory converter ({args.before}); after: this checkout (--memory-limit {limit});")
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at the start; a fresh process per cell\n")
    print(
        "| rows | users | items | converter | seconds | rows/s | CPU s | peak RSS MiB | rows kept | output |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")
    measured: dict[str, list[tuple[int, dict]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="convert_bench_", dir=args.tmp) as tmp:
        codes = {"before": old_code(args.before, Path(tmp) / "before"), "after": REPO}
        for rows in args.rows:
            users, items = round(rows * USERS_PER_ROW), round(rows * ITEMS_PER_ROW)
            folder = Path(tmp) / f"r{rows}"
            generate(folder, rows, users, items, args.zipf)
            results = {}
            for kind in ("before", "after"):
                results[kind] = measure(codes[kind], folder, args.memory_limit if kind == "after" else None)
                measured[kind].append((rows, results[kind]))
            same = results["before"]["sha256"] == results["after"]["sha256"]
            for kind, result in results.items():
                print(
                    f"| {rows:,} | {users:,} | {items:,} | {kind} | {result['seconds']:.1f} | "
                    f"{rows / result['seconds']:,.0f} | {result['cpu_seconds']:.1f} | "
                    f"{result['peak_rss_mib']:,.0f} | {result['kept']:,} | "
                    f"{'identical' if same else 'DIFFERENT'} |",
                    flush=True,
                )
            shutil.rmtree(folder)
    print(f"\nextrapolated to {FULL_AMAZON_2018:,} rows (all of Amazon 2018), linear in the measured points:")
    for kind, points in measured.items():
        seconds = fit([(n, r["seconds"]) for n, r in points], FULL_AMAZON_2018)
        peaks = ", ".join(f"{r['peak_rss_mib']:,.0f} MiB at {n:,}" for n, r in points)
        if kind == "before":
            rss = fit([(n, r["peak_rss_mib"]) for n, r in points], FULL_AMAZON_2018) / 1024
            memory = f"{rss:.1f} GiB peak RSS (linear in rows; measured {peaks})"
        else:
            memory = f"peak RSS held by the engine's memory limit, spilling to disk (measured {peaks})"
        print(f"- {kind}: about {seconds / 60:.1f} min; {memory}")
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
