"""SRT vs RecBole's SASRec and BERT4Rec: same data, same protocol, one command; also the tuner.

    python benchmarks/compare.py --dataset scientific --unisrec-dir PATH/TO/scientific-unisrec \
        --models SRT SASRec BERT4Rec --seeds 3 --out results/compare [--MAX_ITEM_LIST_LENGTH=20 ...]
    python benchmarks/compare.py --dataset scientific --grid benchmarks/grids/scientific.yaml \
        --split valid --seeds 1 --workers 2 --out results/tune
    python benchmarks/compare.py --dataset beauty --data-dir PATH --grid benchmarks/grids/beauty.yaml \
        --tune --seeds 3 --out results/beauty          # tune every model on valid, test each one's best

Every run is :func:`recbole_srt.pipeline.run` with one protocol (leave-one-out, time-ordered, full
ranking) and :data:`SHARED_SETTINGS` (``--key=value`` changes one for every model; otherwise each model
keeps its YAML defaults). Each (dataset, label, seed) runs in a fresh process (for an honest peak RSS)
and is saved as ``OUT/runs/<dataset>__<label>__seed<s>.json``; a rerun skips it unless ``--force``.
``--split valid`` (for choosing settings) never scores the test split; ``--grid FILE`` runs its named
candidates (overrides; ``model:`` in one picks another model than the grid's) instead of ``--models``.
``--tune`` does both: every candidate on valid (``--tune-seeds``), then each model's best candidate (by
valid NDCG@10) on test with ``--seeds``; ``tuning.md`` gives every model's number of candidates, the
choice and its valid score, and flags a run whose best epoch was its last (its budget, not convergence,
ended it).
Outputs in ``OUT``: ``results.csv``, ``summary.csv``, ``results.md`` (mean ± std over seeds) and
``results.png``; docs/benchmarks.md has the details.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from matplotlib.figure import Figure

from recbole_srt.metrics import full_ranks, ranking_metrics

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
PROTOCOL_KEYS = ("topk", "metrics", "eval_args")
# full ranking, then the SRT paper's Recall/NDCG@5 against 10,000 sampled negatives (recbole_srt.metrics)
METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "sampled_recall@5", "sampled_ndcg@5"]
KS = (10, 20)
# test targets by how often they occur in the training part of the sequences (the valid-to-test gap)
POPULARITY_BINS = ((0, 0), (1, 4), (5, 9), (10, 19), (20, None))
POPULARITY_LABELS = [f"{lo}" if lo == hi else f"{lo}+" if hi is None else f"{lo}-{hi}"
                     for lo, hi in POPULARITY_BINS]  # fmt: skip
SLICES = ["unseen_test_users", "unseen_recall@10", "unseen_ndcg@10", "warm_test_users", "warm_recall@10",
          "warm_ndcg@10", "cold_test_users", "cold_recall@10", "cold_ndcg@10",
          *(f"{split}_pop{b}_{m}" for split in ("valid", "test") for b in POPULARITY_LABELS
            for m in ("users", "ndcg@10")), "test_users_with_valid", "test_with_valid_ndcg@10"]  # fmt: skip
COSTS = ["params_trainable", "params_catalog", "s_per_epoch", "peak_rss_mb", "scoring_users_per_s"]
ML_100K_LOAD_COL = {"inter": ["user_id", "item_id", "rating", "timestamp"]}


# --- datasets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """A RecBole dataset: ``data_path/name/name.{inter,item}`` and the YAMLs to read it with."""

    name: str
    data_path: Path
    config_files: list[str]

    @property
    def folder(self) -> Path:
        return self.data_path / self.name


def resolve_dataset(name: str, data_dir: Path, unisrec_dir: Path | None = None) -> DatasetSpec:
    """RecBole's bundled ml-100k, a dataset ``srt-prep`` wrote under ``data_dir``, or a UniSRec import."""
    if name == "ml-100k":
        import recbole

        return DatasetSpec(name, Path(recbole.__file__).parent / "dataset_example", [])
    yaml_file = data_dir / name / f"{name}.yaml"
    if not yaml_file.is_file() and unisrec_dir is not None:
        from dataset_prep.unisrec import import_unisrec

        import_unisrec(unisrec_dir, name, data_dir, prefix=None, max_seq_len=50)
    if not yaml_file.is_file():
        raise SystemExit(
            f"no dataset {name!r}: expected {yaml_file}. Convert it first ('srt-prep convert ... --output "
            f"{data_dir} --name {name}'), or pass --unisrec-dir with UniSRec's pre-split files"
        )
    return DatasetSpec(name, data_dir, [str(yaml_file)])


def _sorted_interactions(spec: DatasetSpec) -> tuple[pd.DataFrame, tuple[str, str, str]]:
    """The atomic ``.inter`` file (strings, plus a float ``_t``) in (user, time) order; its user, item
    and timestamp column names."""
    inter = pd.read_csv(spec.folder / f"{spec.name}.inter", sep="\t", dtype=str, keep_default_na=False)
    columns = tuple(
        next(c for c in inter.columns if c.startswith(f"{f}:")) for f in ("user_id", "item_id", "timestamp")
    )
    inter["_t"] = inter[columns[2]].astype(float)
    return inter.sort_values([columns[0], "_t"], kind="stable"), columns


def hold_out_items(
    spec: DatasetSpec, fraction: float, seed: int, out_dir: Path
) -> tuple[DatasetSpec, set[str]]:
    """Write ``<name>-cold<pct>``: a random ``fraction`` of items kept only as users' last interaction.

    Under leave-one-out those items are test targets that never occur in training or validation
    sequences. Returns the derived dataset and the held-out item tokens; users left with fewer than
    three interactions (too few for a train/valid/test split) are dropped.
    """
    from dataset_prep.atomic import Staging, write_yaml

    name = f"{spec.name}-cold{round(fraction * 100)}"
    folder = out_dir / name
    inter, (user, item, _) = _sorted_interactions(spec)
    items = sorted(inter[item].unique())
    held_out = set(random.Random(seed).sample(items, max(1, round(fraction * len(items)))))
    is_last = ~inter.duplicated(user, keep="last")
    kept = inter[~inter[item].isin(held_out) | is_last]
    kept = kept[kept.groupby(user)[user].transform("size") >= 3].drop(columns="_t")

    config = yaml.safe_load(Path(spec.config_files[0]).read_text()) if spec.config_files else {}
    config = {**config, "load_col": config.get("load_col", ML_100K_LOAD_COL), "data_path": str(out_dir)}
    with Staging(folder) as staging:
        kept.to_csv(staging.path(f"{name}.inter"), sep="\t", index=False)
        shutil.copyfile(spec.folder / f"{spec.name}.item", staging.path(f"{name}.item"))
        write_yaml(staging.path(f"{name}.yaml"), config)
        staging.commit()
    return DatasetSpec(name, out_dir, [str(folder / f"{name}.yaml")]), held_out


# --- one run (in its own process) -------------------------------------------------------------


def target_ranks(trainer, test_data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User id, target item id and its 0-based rank (:func:`recbole_srt.metrics.full_ranks`) for every
    evaluated user.

    Scores come from ``Trainer._full_sort_batch_eval`` (padding and history masked); ranks follow
    RecBole's ``torch.topk(max(KS))`` with ``topk: [10, 20]``, so tied scores (SRT gives items with
    identical text identical scores) are broken as RecBole's evaluator breaks them.
    """
    users, items, ranks = [], [], []
    trainer.model.eval()
    with torch.no_grad():
        for batched_data in test_data:
            interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batched_data)
            targets = positive_i.to(scores.device)
            ranks.append(full_ranks(scores[positive_u], targets, max(KS)).cpu().numpy())
            users.append(interaction[trainer.model.USER_ID][positive_u.cpu()].cpu().numpy())
            items.append(positive_i.cpu().numpy())
    return np.concatenate(users), np.concatenate(items), np.concatenate(ranks)


def scoring_throughput(model, test_data, device) -> float:
    """Users per second of ``full_sort_predict`` over the test users (no grad, eval mode)."""
    model.eval()
    users, start = 0, time.perf_counter()
    with torch.no_grad():
        for interaction, *_ in test_data:
            model.full_sort_predict(interaction.to(device))
            users += len(interaction)
    return users / (time.perf_counter() - start)


def training_counts(spec: DatasetSpec, item_tokens: list[str]) -> np.ndarray:
    """``[n_items]`` occurrences of each item (RecBole's id order ``item_tokens``) in the training part
    of the users' time-ordered sequences, split as RecBole's leave-one-out splits them: a user's last
    two interactions are the valid and test targets, but at least one target stays in training, so a
    user with 3 interactions has only a test target and one with 2 has none."""
    inter, (user, item, _) = _sorted_interactions(spec)
    n = inter.groupby(user)[item].transform("size")
    training = inter[inter.groupby(user).cumcount(ascending=False) >= (n - 2).clip(0, 2)]
    counts = training[item].value_counts()
    return np.array([int(counts.get(token, 0)) for token in item_tokens], dtype=np.int64)


def popularity_slices(split: str, targets: np.ndarray, ranks: np.ndarray, counts: np.ndarray) -> dict:
    """Users and NDCG@10 of the targets in each bin of :data:`POPULARITY_BINS`."""
    row = {}
    for (lo, hi), label in zip(POPULARITY_BINS, POPULARITY_LABELS, strict=True):
        inside = (counts[targets] >= lo) & (counts[targets] <= (hi if hi is not None else np.inf))
        row[f"{split}_pop{label}_users"] = int(inside.sum())
        row[f"{split}_pop{label}_ndcg@10"] = ranking_metrics(ranks[inside]).get("ndcg@10", float("nan"))
    return row


def slice_metrics(result, spec: DatasetSpec, cold_items: set[str] | None) -> dict:
    """Scoring speed, the whole test set ranked by hand (a check), the unseen, warm and cold slices, and
    the valid and test targets by training popularity."""
    tokens = list(result.train_data._dataset.field2id_token[result.config["ITEM_ID_FIELD"]])
    test_users, targets, ranks = target_ranks(result.trainer, result.test_data)
    valid_users, valid_targets, valid_ranks = target_ranks(result.trainer, result.valid_data)
    counts = training_counts(spec, tokens)
    unseen = counts[targets] == 0
    scored_on_valid = np.isin(test_users, valid_users)  # users with 3 interactions have no valid target

    def part(name: str, inside: np.ndarray) -> dict:
        metrics = {f"{name}_{k}": v for k, v in ranking_metrics(ranks[inside]).items()}
        return {f"{name}_test_users": int(inside.sum()), **metrics}

    row = {
        "scoring_users_per_s": scoring_throughput(result.model, result.test_data, result.config["device"]),
        "ranked_test_ndcg@10": ranking_metrics(ranks)["ndcg@10"],
        **part("unseen", unseen),
        **part("warm", ~unseen),
        **popularity_slices("valid", valid_targets, valid_ranks, counts),
        **popularity_slices("test", targets, ranks, counts),
        "test_users_with_valid": int(scored_on_valid.sum()),
        "test_with_valid_ndcg@10": ranking_metrics(ranks[scored_on_valid]).get("ndcg@10", float("nan")),
    }
    if cold_items is not None:
        id_of = {token: i for i, token in enumerate(tokens)}
        row |= part("cold", np.isin(targets, [id_of[t] for t in cold_items if t in id_of]))
    return row


def run_one(job: dict, threads: int | None) -> dict:
    """Train and evaluate one job of :func:`planned_runs`; one result row. Prints a line per epoch."""
    if threads:
        torch.set_num_threads(threads)
    from recbole_srt.cli import quiet_library_warnings
    from recbole_srt.pipeline import make_config, run

    quiet_library_warnings()
    spec: DatasetSpec = job["dataset"]
    settings = {**job["settings"], "seed": job["seed"], "data_path": str(spec.data_path)}
    config = make_config(job["model"], spec.name, spec.config_files, settings)

    def progress(result, stats) -> None:
        print(f"{job['label_line']} epoch {stats.epoch + 1}: valid {config['valid_metric']} "
              f"{stats.valid_score:.4f}, {stats.train_seconds:.0f} s training", flush=True)  # fmt: skip

    test = job["split"] == "test"
    result = run(config, evaluate_test=test, measure_flops=True, on_epoch=progress)
    row = {"label": job["label"], "overrides": job["overrides"], **result.record.to_dict()}
    if test:
        row.update(slice_metrics(result, spec, job["cold_items"]))
    return row


# --- the plan and the tables ---------------------------------------------------------------------


def candidates(args: argparse.Namespace) -> tuple[dict[str, tuple[str, dict]], dict]:
    """``label -> (model, overrides)`` and the grid's shared settings (``{}`` without ``--grid``)."""
    if args.grid is None:
        return {model: (model, {}) for model in args.models}, {}
    from recbole_srt.overrides import OverrideError, read_config_file

    try:
        grid = read_config_file(args.grid)
    except OverrideError as error:
        raise SystemExit(f"compare: error: {error}") from None
    missing = {"model", "candidates"} - set(grid)
    if missing or not isinstance(grid["candidates"], dict):
        what = f"missing {sorted(missing)}" if missing else "candidates must map names to overrides"
        raise SystemExit(f"compare: error: {args.grid}: {what}")
    unknown = sorted(set(args.candidates or []) - set(grid["candidates"]))
    if unknown:
        raise SystemExit(
            f"compare: error: {args.grid}: no candidates {unknown}; it has {sorted(grid['candidates'])}"
        )
    chosen = {name: dict(overrides or {}) for name, overrides in grid["candidates"].items()
              if not args.candidates or name in args.candidates}  # fmt: skip
    labels = {name: (overrides.pop("model", grid["model"]), overrides) for name, overrides in chosen.items()}
    return labels, grid.get("settings") or {}


def planned_runs(args, datasets, labels: dict, settings: dict, split: str, seeds: int) -> list[dict]:
    runs = "runs" if split == args.split else f"runs-{split}"
    return [
        {
            "dataset": spec,
            "cold_items": cold,
            "label": label,
            "model": model,
            "overrides": overrides,
            "settings": {**settings, **overrides, "checkpoint_dir": str(args.out / "checkpoints")},
            "split": split,
            "seed": 2020 + i,
            "file": args.out / runs / f"{spec.name}__{label}__seed{2020 + i}.json",
        }
        for spec, cold in datasets
        for label, (model, overrides) in labels.items()
        for i in range(seeds if cold is None or args.cold_seeds is None else args.cold_seeds)
    ]


def summarize(rows: pd.DataFrame, split: str) -> pd.DataFrame:
    """Mean and std over seeds per (dataset, label), best first for a valid-split grid."""
    metrics = [f"{split}_{m}" for m in METRICS] + (["valid_ndcg@10"] if split == "test" else [])
    columns = [c for c in metrics + SLICES + COSTS + ["best_epoch"] if c in rows]
    grouped = rows.groupby(["dataset", "label"], sort=False)[columns]
    summary = grouped.mean().join(grouped.std(ddof=0).add_suffix("_std"))
    summary["seeds"] = grouped.size()
    summary = summary.reset_index()
    if split == "valid":
        summary = summary.sort_values(f"valid_{METRICS[2]}", ascending=False, kind="stable")
    return summary


def _mean_std(summary: pd.DataFrame, column: str) -> pd.Series:
    std = summary.get(f"{column}_std")
    if std is None or not std.fillna(0).any():
        return summary[column].map("{:.4f}".format)
    return summary[column].map("{:.4f}".format) + " ± " + std.map("{:.4f}".format)


def markdown(summary: pd.DataFrame, split: str, settings: dict, threads: int | None) -> str:
    table = summary[["dataset", "label", "seeds"]].copy()
    for metric in METRICS:
        table[metric] = _mean_std(summary, f"{split}_{metric}")
    table["trainable params"] = summary["params_trainable"].map("{:,.0f}".format)
    table["catalog params"] = summary["params_catalog"].map("{:,.0f}".format)
    table["s/epoch"] = summary["s_per_epoch"].map("{:.1f}".format)
    table["peak RSS MB"] = summary["peak_rss_mb"].map("{:.0f}".format)
    if "scoring_users_per_s" in summary:
        table["users/s"] = summary["scoring_users_per_s"].map("{:,.0f}".format)
    else:
        table["best epoch"] = summary["best_epoch"].map("{:.1f}".format)
    parts = [f"{split.capitalize()} split, best-on-valid epoch.", "", table.to_markdown(index=False)]
    if "cold_ndcg@10" in summary and summary["cold_ndcg@10"].notna().any():
        slices = summary.dropna(subset=["cold_ndcg@10"])
        cold = slices[["dataset", "label", "cold_test_users"]].copy()
        cold["recall@10"] = _mean_std(slices, "cold_recall@10")
        cold["ndcg@10"] = _mean_std(slices, "cold_ndcg@10")
        cold["cold_test_users"] = slices["cold_test_users"].map("{:.0f}".format)
        cold["warm test users"] = slices["warm_test_users"].map("{:.0f}".format)
        cold["warm ndcg@10"] = _mean_std(slices, "warm_ndcg@10")
        cold["cold / all ndcg@10"] = (slices["cold_ndcg@10"] / slices["test_ndcg@10"]).map("{:.2f}".format)
        parts += ["", "Cold start (test targets held out of all training and validation sequences; warm: "
                  "test targets that occur in training):", "",
                  cold.to_markdown(index=False, disable_numparse=True)]  # fmt: skip
    if split == "test" and "valid_pop0_users" in summary:
        gap = gap_table(summary)
        parts += ["", "From valid to test (NDCG@10), and the change expected from the targets' training "
                  "popularity alone (valid NDCG@10 per popularity bin, weighted by the test targets' bins):",
                  "", gap.to_markdown(index=False, floatfmt=".4f")]  # fmt: skip
    parts += ["", "Shared settings (every model; otherwise each model's own YAML defaults):", "", "```yaml",
              yaml.safe_dump(settings, sort_keys=False).strip(), "```", "",
              f"torch CPU threads per run: {threads or 'all cores'}."]  # fmt: skip
    return "\n".join(parts) + "\n"


def gap_table(summary: pd.DataFrame) -> pd.DataFrame:
    """From valid to test NDCG@10, and how much of the change the targets' popularity mix explains.

    ``valid, test mix``: each popularity bin's valid NDCG@10 weighted by the share of *test* targets in
    that bin; what the valid score would have been had valid targets been as popular as test targets.
    """
    rows = []
    for r in summary.to_dict("records"):
        valid_bins = [r.get(f"valid_pop{b}_ndcg@10", np.nan) for b in POPULARITY_LABELS]
        test_users = np.array([r.get(f"test_pop{b}_users", np.nan) for b in POPULARITY_LABELS], dtype=float)
        valid_users = np.array([r.get(f"valid_pop{b}_users", np.nan) for b in POPULARITY_LABELS], dtype=float)
        known = ~np.isnan(np.array(valid_bins, dtype=float)) & (test_users > 0)
        if not known.any():
            continue
        mixed = float(np.dot(np.nan_to_num(valid_bins)[known], test_users[known]) / test_users[known].sum())
        valid, test = r["valid_ndcg@10"], r["test_ndcg@10"]
        rows.append({
            "dataset": r["dataset"], "label": r["label"],
            "valid N@10": valid, "test N@10": test, "change": f"{test / valid - 1:+.1%}",
            "valid, test mix": mixed, "change from the mix": f"{mixed / valid - 1:+.1%}",
            "test N@10, users with a valid target": r.get("test_with_valid_ndcg@10", np.nan),
            "share of test users with one": r.get("test_users_with_valid", np.nan) / test_users.sum(),
            **{f"share seen ≤{POPULARITY_BINS[i][1]}× valid / test":
               f"{valid_users[: i + 1].sum() / valid_users.sum():.2f} / "
               f"{test_users[: i + 1].sum() / test_users.sum():.2f}" for i in (0, 1)},
        })  # fmt: skip
    return pd.DataFrame(rows)


def plot(summary: pd.DataFrame, split: str, path: Path) -> None:
    metrics = [m for m in [f"{split}_ndcg@10", f"{split}_recall@10", "cold_ndcg@10"] if m in summary]
    fig = Figure(figsize=(4.5 * len(metrics), 3.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        rows = summary.dropna(subset=[metric])
        labels = [f"{r.label}\n{r.dataset}" for r in rows.itertuples()]
        ax.bar(labels, rows[metric], yerr=rows[f"{metric}_std"].fillna(0), capsize=4, color="tab:blue")
        ax.set_title(metric.replace("_", " "))
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        description="Compare SRT with RecBole baselines on one protocol (or tune on valid).",
        allow_abbrev=False,
        epilog="Any other --key=value is a shared setting for every run, e.g. --MAX_ITEM_LIST_LENGTH=20.",
    )
    p.add_argument("--dataset", default="ml-100k", help="ml-100k, or a dataset converted under --data-dir")
    p.add_argument("--models", nargs="+", default=["SRT", "SASRec", "BERT4Rec"])
    p.add_argument("--grid", type=Path, help="YAML: model, settings, candidates (instead of --models)")
    p.add_argument("--candidates", nargs="+", help="with --grid: run only these candidates")
    p.add_argument("--split", choices=("test", "valid"), default="test", help="valid: test never scored")
    p.add_argument(
        "--tune", action="store_true", help="with --grid: candidates on valid, each model's best on test"
    )
    p.add_argument(
        "--tune-seeds", type=int, default=1, help="seeds of each candidate when tuning (default 1)"
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (2020, 2021, ...)")
    p.add_argument("--out", type=Path, default=Path("results/compare"))
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="where converted datasets live")
    p.add_argument("--unisrec-dir", type=Path, help="UniSRec files to import the dataset from if needed")
    p.add_argument("--epochs", type=int, help=f"epoch budget (default {SHARED_SETTINGS['epochs']})")
    p.add_argument("--cold-start", action="store_true", help="also run the held-out-items cold start")
    p.add_argument("--cold-fraction", type=float, default=0.1)
    p.add_argument("--cold-seeds", type=int, help="seeds on the held-out-items copy (default --seeds)")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--workers", type=int, default=1, help="runs at once (CPU threads split among them)")
    p.add_argument("--threads", type=int, help="torch CPU threads per run (default: cores / workers)")
    args, rest = p.parse_known_args(argv)
    counts = {"--seeds": args.seeds, "--cold-seeds": args.cold_seeds, "--epochs": args.epochs,
              "--workers": args.workers, "--threads": args.threads,
              "--tune-seeds": args.tune_seeds}  # fmt: skip
    low = [name for name, value in counts.items() if value is not None and value < 1]
    if low:
        p.error(f"{', '.join(low)} must be at least 1")
    if not 0 < args.cold_fraction < 1:
        p.error(f"--cold-fraction must be between 0 and 1, got {args.cold_fraction}")
    if args.tune and (args.grid is None or args.split != "test"):
        p.error("--tune needs --grid (the candidates) and tests the winners (no --split valid)")
    return args, rest


def shared_settings(args: argparse.Namespace, rest: list[str]) -> dict:
    from recbole_srt.overrides import OverrideError, known_config_keys, parse_overrides

    try:
        overrides = parse_overrides(rest, known_config_keys())
    except OverrideError as error:
        raise SystemExit(f"compare: error: {error}") from None
    fixed = sorted(set(overrides) & set(PROTOCOL_KEYS))
    if fixed:
        raise SystemExit(
            f"compare: error: {fixed} are fixed by the protocol (full ranking, metrics at 10 and 20)"
        )
    settings = {**SHARED_SETTINGS, **overrides}
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    return settings


def execute(args: argparse.Namespace, runs: list[dict], threads: int) -> tuple[pd.DataFrame, int]:
    """Run what ``runs`` still lacks (a fresh process each, ``--workers`` at once); every finished row, and
    the number of runs that failed."""
    todo = []
    for n, job in enumerate(runs, start=1):
        job["label_line"] = f"[{n}/{len(runs)}] {job['dataset'].name} {job['label']} seed {job['seed']}"
        if job["file"].is_file() and not args.force:
            print(f"{job['label_line']}: done earlier, skipped ({job['file']})", flush=True)
        else:
            todo.append(job)
    for folder in {job["file"].parent for job in runs}:
        folder.mkdir(parents=True, exist_ok=True)
    failed = 0
    context = multiprocessing.get_context("spawn")
    # a fresh process per run: its peak RSS is that run's alone
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context, max_tasks_per_child=1) as pool:
        started = {pool.submit(run_one, job, threads): (job, time.perf_counter()) for job in todo}
        for future in as_completed(started):
            job, start = started[future]
            try:
                row = future.result()
            except Exception as error:  # one failing run must not lose the others
                failed += 1
                message = f"{job['label_line']}: FAILED: {type(error).__name__}: {error}"
                print(message, file=sys.stderr, flush=True)
                continue
            job["file"].write_text(json.dumps(row, indent=2))
            metric = f"{job['split']}_ndcg@10"
            print(f"{job['label_line']}: {metric} {row[metric]:.4f}, {row['epochs_run']} epochs, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    rows = pd.DataFrame([json.loads(job["file"].read_text()) for job in runs if job["file"].is_file()])
    return rows, failed


def family(model: str, overrides: dict) -> str:
    """The model a candidate tunes: its RecBole model, ``SRT+IDs`` for SRT with an item-ID table."""
    return f"{model}+IDs" if overrides.get("item_id_embedding", "none") != "none" else model


def winners(rows: pd.DataFrame, labels: dict) -> tuple[dict, pd.DataFrame]:
    """Each model's (:func:`family`'s) best candidate by mean valid NDCG@10, and the tuning table (one row
    per model)."""
    rows = rows.assign(model_name=rows["label"].map(lambda label: family(*labels[label])))
    means = rows.groupby(["model_name", "label"], sort=False)["valid_ndcg@10"].mean().reset_index()
    budget_bound = rows.assign(last=rows["best_epoch"] == rows["epochs_run"]).groupby("label")["last"].sum()
    best = means.loc[means.groupby("model_name")["valid_ndcg@10"].idxmax()]
    table = pd.DataFrame({
        "model": best["model_name"],
        "candidates tried": [int((means["model_name"] == m).sum()) for m in best["model_name"]],
        "chosen": best["label"],
        "valid NDCG@10": best["valid_ndcg@10"],
        "runs whose best epoch was the last": [int(budget_bound.get(label, 0)) for label in best["label"]],
    })  # fmt: skip
    return {label: labels[label] for label in best["label"]}, table


def report(args: argparse.Namespace, rows: pd.DataFrame, split: str, settings: dict, threads: int) -> str:
    """``results.csv``, ``summary.csv``, ``results.md`` and ``results.png`` of ``rows``; the markdown."""
    rows.to_csv(args.out / "results.csv", index=False)
    summary = summarize(rows, split)
    summary.to_csv(args.out / "summary.csv", index=False)
    table = markdown(summary, split, settings, threads)
    (args.out / "results.md").write_text(table)
    plot(summary, split, args.out / "results.png")
    return table


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    settings = shared_settings(args, rest)
    labels, grid_settings = candidates(args)
    settings |= grid_settings
    spec = resolve_dataset(args.dataset, args.data_dir, args.unisrec_dir)
    datasets = [(spec, None)]
    if args.cold_start:
        datasets.append(hold_out_items(spec, args.cold_fraction, seed=0, out_dir=args.out / "data"))
    args.out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    failed = 0
    if args.tune:
        tuning, failed = execute(args, planned_runs(args, [(spec, None)], labels, settings, "valid",
                                                    args.tune_seeds), threads)  # fmt: skip
        if tuning.empty:
            print("no finished tuning run", file=sys.stderr)
            return 1
        labels, chosen = winners(tuning, labels)
        text = chosen.to_markdown(index=False, floatfmt=".4f")
        (args.out / "tuning.md").write_text(
            f"Candidates on the validation split ({args.tune_seeds} seed(s) each), each model's best by mean "
            f"valid NDCG@10; its test runs use {args.seeds} seeds.\n\n{text}\n"
        )
        print(text)
    rows, test_failed = execute(args, planned_runs(args, datasets, labels, settings, args.split, args.seeds),
                                threads)  # fmt: skip
    if rows.empty:
        print("no finished runs", file=sys.stderr)
        return 1
    print(report(args, rows, args.split, settings, threads))
    return 1 if failed or test_failed else 0


if __name__ == "__main__":
    sys.exit(main())
