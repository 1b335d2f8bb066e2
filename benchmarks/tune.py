"""Tune a model on the validation split only: every candidate of a grid file, one seed each.

    python benchmarks/tune.py --grid properties/tune/scientific.yaml --out results/tune --workers 2

The grid file names the dataset, the model and its candidates (each a dict of config overrides
on top of ``benchmarks/compare.py``'s shared settings and the model's YAML defaults)::

    dataset: scientific
    model: SRT
    settings: {epochs: 30}          # optional, for every candidate
    candidates:
      defaults: {}
      cosine: {similarity: cosine, temperature: 0.07}

Each candidate trains in a fresh process with early stopping on valid NDCG@10; the test split
is never scored, so choosing a candidate from this table does not touch the test set.
Outputs in ``OUT``: ``runs/<candidate>.json``, ``tune.csv``, ``tune.md`` (best first) and
``tune.png``. A rerun skips finished candidates unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import matplotlib
import pandas as pd
import yaml

from benchmarks.compare import SHARED_SETTINGS
from benchmarks.compare_data import DEFAULT_UNISREC_DIR, resolve_dataset
from benchmarks.compare_run import run_one

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SEED = 2020
SHOWN = ["valid_ndcg@10", "valid_recall@10", "valid_ndcg@20", "valid_recall@20", "valid_mrr@10"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Tune on the validation split (test never scored).")
    parser.add_argument("--grid", type=Path, required=True, help="YAML: dataset, model, settings, candidates")
    parser.add_argument("--out", type=Path, default=Path("results/tune"))
    parser.add_argument("--only", nargs="+", help="run only these candidates")
    parser.add_argument(
        "--workers", type=int, default=1, help="candidates trained at once (CPU threads split)"
    )
    parser.add_argument("--threads", type=int, help="torch threads per candidate (default: cores / workers)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where converted datasets live")
    parser.add_argument("--unisrec-dir", type=Path, default=DEFAULT_UNISREC_DIR)
    parser.add_argument("--force", action="store_true", help="rerun finished candidates")
    return parser.parse_args(argv)


def load_grid(path: Path) -> dict:
    grid = yaml.safe_load(path.read_text())
    missing = {"dataset", "model", "candidates"} - set(grid or {})
    if missing:
        raise SystemExit(f"{path}: missing {sorted(missing)}")
    return grid


def table(rows: pd.DataFrame) -> str:
    header = [
        "candidate",
        *[c.removeprefix("valid_") for c in SHOWN],
        "best epoch",
        "epochs",
        "s/epoch",
        "overrides",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in rows.iterrows():
        cells = [f"{r[c]:.4f}" for c in SHOWN]
        overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(defaults)"
        lines.append(
            f"| {r['candidate']} | {' | '.join(cells)} | {r['best_epoch']} | {r['epochs_run']} "
            f"| {r['s_per_epoch']:.0f} | {overrides} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1.2))
    ordered = rows.iloc[::-1]
    ax.barh(ordered["candidate"], ordered["valid_ndcg@10"], color="tab:blue")
    ax.set_xlabel("valid NDCG@10 (best epoch)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    grid = load_grid(args.grid)
    spec = resolve_dataset(grid["dataset"], args.data_dir, args.unisrec_dir)
    base = {**SHARED_SETTINGS, **(grid.get("settings") or {}), "data_path": str(spec.data_path)}
    unknown = sorted(set(args.only or []) - set(grid["candidates"]))
    if unknown:
        raise SystemExit(f"--only: no such candidates in {args.grid}: {unknown}")
    candidates = {
        name: overrides or {}
        for name, overrides in grid["candidates"].items()
        if not args.only or name in args.only
    }
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    todo = {
        name: overrides
        for name, overrides in candidates.items()
        if args.force or not (args.out / "runs" / f"{name}.json").is_file()
    }
    print(f"{len(candidates) - len(todo)} of {len(candidates)} candidates done earlier", flush=True)

    failed = 0
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        started = {
            pool.submit(
                run_one,
                grid["model"],
                spec.name,
                spec.config_files,
                {**base, **overrides},
                SEED,
                args.out / "checkpoints" / name,
                evaluate_test=False,
                progress=f"{name}:",
                threads=threads,
            ): (name, time.perf_counter())
            for name, overrides in todo.items()
        }
        for future in as_completed(started):
            name, start = started[future]
            try:
                row = future.result()
            except Exception as error:  # one failing candidate must not lose the others
                failed += 1
                print(f"{name}: FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
                continue
            row = {"candidate": name, "overrides": candidates[name], **row}
            (args.out / "runs" / f"{name}.json").write_text(json.dumps(row, indent=2))
            print(
                f"{name}: valid NDCG@10 {row['valid_ndcg@10']:.4f} (epoch {row['best_epoch']} of "
                f"{row['epochs_run']}), {time.perf_counter() - start:.0f} s",
                flush=True,
            )

    # the table covers every finished candidate of the grid, also those an --only run skipped
    finished = [args.out / "runs" / f"{name}.json" for name in grid["candidates"]]
    rows = pd.DataFrame([json.loads(f.read_text()) for f in finished if f.is_file()])
    if rows.empty:
        print("no finished candidates", file=sys.stderr)
        return 1
    rows = rows.sort_values("valid_ndcg@10", ascending=False, kind="stable")
    rows.to_csv(args.out / "tune.csv", index=False)
    text = table(rows)
    (args.out / "tune.md").write_text(text)
    plot(rows, args.out / "tune.png")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
