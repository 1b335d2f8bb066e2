"""SRT vs RecBole's SASRec and BERT4Rec: same data, same protocol, one command.

    python benchmarks/compare.py --dataset scientific --models SRT SASRec BERT4Rec --seeds 3 --out results/

Every model trains on the same atomic files with the same protocol: leave-one-out, time-ordered,
full ranking (no sampled negatives), and the shared settings below (sequence length, batch size,
epoch budget, early stopping on valid NDCG@10). Each model otherwise keeps its own RecBole YAML
defaults (SRT: ``properties/model/SRT.yaml``). Each (dataset, model, seed) runs in a fresh
process (for an honest peak RSS) and is saved as ``OUT/runs/<dataset>__<model>__seed<s>.json``.
A rerun skips finished runs unless ``--force``.

Outputs in ``OUT``: ``results.csv`` (one row per run), ``summary.csv`` and ``results.md``
(mean ± std over seeds, plus the settings used), ``results.png``.

``--cold-start`` adds a second dataset derived by :func:`compare_data.hold_out_items` (a random
``--cold-fraction`` of items removed from all training and validation sequences, kept only as
users' last, test, interaction) and reports every model on the test users whose target is one
of those items. Every run also reports the natural slice: test targets absent from training.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib
import pandas as pd
import yaml

from benchmarks.compare_data import DEFAULT_UNISREC_DIR, DatasetSpec, hold_out_items, resolve_dataset
from benchmarks.compare_run import run_one

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SHARED_SETTINGS = {
    "MAX_ITEM_LIST_LENGTH": 50,
    "train_batch_size": 512,
    "eval_batch_size": 1024,
    "epochs": 50,
    "stopping_step": 5,
    "valid_metric": "NDCG@10",
    "metrics": ["Recall", "NDCG", "MRR"],
    "topk": [10, 20],
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
    "train_neg_sample_args": None,
    "show_progress": False,
    "state": "WARNING",
}
REPORTED = ["test_recall@10", "test_recall@20", "test_ndcg@10", "test_ndcg@20", "test_mrr@10"]
COLD = [
    "cold_test_users",
    "cold_recall@10",
    "cold_ndcg@10",
    "unseen_test_users",
    "unseen_recall@10",
    "unseen_ndcg@10",
]
COSTS = ["trainable_params", "catalog_params", "s_per_epoch", "peak_rss_mb", "scoring_users_per_s"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Compare SRT with RecBole baselines on one protocol.")
    parser.add_argument("--dataset", default="ml-100k", help="ml-100k, scientific, or a converted dataset")
    parser.add_argument("--models", nargs="+", default=["SRT", "SASRec", "BERT4Rec"])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (2020, 2021, ...)")
    parser.add_argument("--out", type=Path, default=Path("results/compare"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where converted datasets live")
    parser.add_argument(
        "--unisrec-dir",
        type=Path,
        default=DEFAULT_UNISREC_DIR,
        help="UniSRec files imported when --dataset scientific is not converted yet",
    )
    parser.add_argument("--epochs", type=int, help=f"epoch budget (default {SHARED_SETTINGS['epochs']})")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another shared setting for every model (YAML value), e.g. --set hidden_size=128",
    )
    parser.add_argument("--cold-start", action="store_true", help="also run the held-out-items cold start")
    parser.add_argument("--cold-fraction", type=float, default=0.1)
    parser.add_argument("--force", action="store_true", help="rerun finished runs")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads per run (default: all cores); 1 to run two comparisons at once",
    )
    return parser.parse_args(argv)


def shared_settings(args: argparse.Namespace) -> dict:
    settings = dict(SHARED_SETTINGS)
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    for assignment in args.set:
        key, _, value = assignment.partition("=")
        if key in ("topk", "metrics", "eval_args"):
            raise SystemExit(f"--set {key}: fixed by the protocol (full ranking, metrics at 10 and 20)")
        settings[key] = yaml.safe_load(value)
    return settings


def planned_runs(args, datasets: list[tuple[DatasetSpec, set[str] | None]]) -> list[dict]:
    return [
        {
            "dataset": spec,
            "cold_items": cold,
            "model": model,
            "seed": 2020 + i,
            "file": args.out / "runs" / f"{spec.name}__{model}__seed{2020 + i}.json",
        }
        for spec, cold in datasets
        for model in args.models
        for i in range(args.seeds)
    ]


def execute(run: dict, settings: dict, out: Path, label: str, threads: int | None) -> dict:
    """Run in a fresh spawned process (a progress line per epoch); return its result row."""
    spec: DatasetSpec = run["dataset"]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        future = pool.submit(
            run_one,
            run["model"],
            spec.name,
            spec.config_files,
            {**settings, "data_path": str(spec.data_path)},
            run["seed"],
            out / "checkpoints",
            run["cold_items"],
            progress=label,
            threads=threads,
        )
        return future.result()


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (dataset, model)."""
    metrics = [c for c in REPORTED + COLD + COSTS if c in rows]
    grouped = rows.groupby(["dataset", "model"], sort=False)[metrics]
    summary = grouped.mean().join(grouped.std(ddof=0), rsuffix="_std")
    summary["seeds"] = rows.groupby(["dataset", "model"], sort=False).size()
    return summary.reset_index()


def markdown(summary: pd.DataFrame, settings: dict, threads: int | None = None) -> str:
    def cell(row, column, digits=4):
        if column not in row or pd.isna(row[column]):
            return ""
        std = row.get(f"{column}_std")
        return (
            f"{row[column]:.{digits}f} ± {std:.{digits}f}" if pd.notna(std) else f"{row[column]:.{digits}f}"
        )

    header = [
        "dataset",
        "model",
        "seeds",
        *[c.removeprefix("test_") for c in REPORTED],
        "trainable params",
        "catalog params",
        "s/epoch",
        "peak RSS MB",
        "users/s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        costs = [
            f"{row['trainable_params']:,.0f}",
            f"{row['catalog_params']:,.0f}",
            f"{row['s_per_epoch']:.1f}",
            f"{row['peak_rss_mb']:.0f}",
            f"{row['scoring_users_per_s']:,.0f}",
        ]
        lines.append(
            "| "
            + " | ".join(
                [row["dataset"], row["model"], str(row["seeds"]), *[cell(row, c) for c in REPORTED], *costs]
            )
            + " |"
        )
    cold_rows = summary.dropna(subset=["cold_ndcg@10"]) if "cold_ndcg@10" in summary else summary.iloc[:0]
    if len(cold_rows):
        lines += [
            "",
            "Cold start (test targets held out of all training and validation sequences):",
            "",
            "| dataset | model | cold test users | recall@10 | ndcg@10 |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['dataset']} | {r['model']} | {r['cold_test_users']:.0f} | {cell(r, 'cold_recall@10')} "
            f"| {cell(r, 'cold_ndcg@10')} |"
            for _, r in cold_rows.iterrows()
        ]
    lines += [
        "",
        "Shared settings (every model; otherwise each model's own RecBole YAML defaults):",
        "",
        "```yaml",
        yaml.safe_dump(settings, sort_keys=False).strip(),
        "```",
        "",
        f"torch CPU threads per run: {threads or 'all cores'}.",
    ]
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, path: Path) -> None:
    metrics = [m for m in ["test_ndcg@10", "test_recall@10", "cold_ndcg@10"] if m in summary]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        rows = summary.dropna(subset=[metric])
        labels = [f"{r.model}\n{r.dataset}" for r in rows.itertuples()]
        ax.bar(labels, rows[metric], yerr=rows[f"{metric}_std"].fillna(0), capsize=4, color="tab:blue")
        ax.set_title(metric.replace("_", " "))
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = shared_settings(args)
    spec = resolve_dataset(args.dataset, args.data_dir, args.unisrec_dir)
    datasets = [(spec, None)]
    if args.cold_start:
        datasets.append(hold_out_items(spec, args.cold_fraction, seed=0, out_dir=args.out / "data"))
    runs = planned_runs(args, datasets)
    (args.out / "runs").mkdir(parents=True, exist_ok=True)

    failed = 0
    for n, run in enumerate(runs, start=1):
        label = f"[{n}/{len(runs)}] {run['dataset'].name} {run['model']} seed {run['seed']}"
        if run["file"].is_file() and not args.force:
            print(f"{label}: done earlier, skipped ({run['file']})", flush=True)
            continue
        start = time.perf_counter()
        try:
            row = execute(run, settings, args.out, label, args.threads)
        except Exception as error:  # one failing run must not lose the others
            failed += 1
            print(f"{label}: FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            continue
        run["file"].write_text(json.dumps(row, indent=2))
        print(
            f"{label}: NDCG@10 {row['test_ndcg@10']:.4f}, Recall@10 {row['test_recall@10']:.4f}, "
            f"{row['epochs_run']} epochs, {time.perf_counter() - start:.0f} s",
            flush=True,
        )

    rows = pd.DataFrame([json.loads(r["file"].read_text()) for r in runs if r["file"].is_file()])
    if rows.empty:
        print("no finished runs", file=sys.stderr)
        return 1
    rows.to_csv(args.out / "results.csv", index=False)
    summary = summarize(rows)
    summary.to_csv(args.out / "summary.csv", index=False)
    table = markdown(summary, settings, args.threads)
    (args.out / "results.md").write_text(table)
    plot(summary, args.out / "results.png")
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
