"""Time to quality from ``benchmarks/compare.py`` runs: who reaches the reference's best, and how fast.

    python benchmarks/time_to_quality.py --results results/data-modes/results.csv --reference SASRec

For every run (a row of compare's ``results.csv``, valid curve and per-epoch seconds of training
plus validation): its best valid NDCG@10, the wall time until its valid NDCG@10 first reached the
reference's best (``never`` if it did not), and its best valid NDCG@10 within the reference's own
wall time (equal wall time). Means over seeds per label. Writes ``time_to_quality.md`` and
``time_to_quality.png`` beside the results.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def curves(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run with numpy arrays ``valid`` and ``wall`` (cumulative seconds at each epoch)."""
    lists = rows[["valid_curve", "epoch_seconds"]].map(lambda v: np.asarray(ast.literal_eval(v), float))
    return rows[["label", "seed"]].assign(
        valid=lists["valid_curve"], wall=lists["epoch_seconds"].map(np.cumsum)
    )


def table(runs: pd.DataFrame, reference: str) -> pd.DataFrame:
    ref = runs[runs["label"] == reference]
    if ref.empty:
        raise ValueError(f"no runs labelled {reference!r}; labels: {sorted(runs['label'].unique())}")
    target = float(np.mean([v.max() for v in ref["valid"]]))
    budget = float(np.mean([w[-1] for w in ref["wall"]]))

    def reach(run) -> float:
        hit = np.flatnonzero(run.valid >= target)
        return float(run.wall[hit[0]]) if len(hit) else np.nan

    def within(run) -> float:
        inside = run.valid[run.wall <= budget]
        return float(inside.max()) if len(inside) else np.nan

    each = list(runs.itertuples())
    stats = runs.assign(
        best=[r.valid.max() for r in each], reach=[reach(r) for r in each],
        within=[within(r) for r in each], total=[r.wall[-1] for r in each],
    )  # fmt: skip
    summary = stats.groupby("label", sort=False)[["best", "reach", "within", "total"]].mean().reset_index()
    summary.columns = ["label", "best valid NDCG@10", f"s to {reference}'s best ({target:.4f})",
                       f"best valid NDCG@10 within {budget:.0f} s", "total s"]  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, required=True, help="compare.py's results.csv")
    p.add_argument("--reference", default="SASRec", help="label whose best valid NDCG@10 is the target")
    args = p.parse_args(argv)
    try:
        rows = pd.read_csv(args.results)
        missing = sorted({"label", "seed", "valid_curve", "epoch_seconds"} - set(rows.columns))
        if missing:
            raise ValueError(f"{args.results}: no columns {missing}; is it compare.py's results.csv?")
        runs = curves(rows)
        summary = table(runs, args.reference)
    except (OSError, ValueError, SyntaxError) as error:  # unreadable, empty or not compare's table
        p.exit(2, f"time_to_quality: error: {error}\n")
    text = summary.to_markdown(index=False, floatfmt=".4g").replace("nan", "never") + "\n"
    (args.results.parent / "time_to_quality.md").write_text(text)
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for run in runs.itertuples():
        ax.plot(run.wall, run.valid, marker="o", ms=3, label=f"{run.label} (seed {run.seed})")
    ax.set(xlabel="wall seconds (training + validation)", ylabel="valid NDCG@10", title="Time to quality")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.results.parent / "time_to_quality.png", dpi=120)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
