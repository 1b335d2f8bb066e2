"""Transfer benchmark: does a larger pre-trained SRT fine-tune better? Pre-train once per size, then on
each target: zero-shot, each fine-tuning strategy and SRT from scratch, over several seeds.

    python benchmarks/transfer.py --pretrain data/corpus/corpus.yaml \
        --target data/beauty/beauty.yaml --target data/scientific/scientific.yaml \
        --hidden-size 16 64 256 --seeds 3 --strategies full progressive --epochs 20 \
        [--pretrain-settings "{loss_type: SSM}"] [--settings "{MAX_ITEM_LIST_LENGTH: 50}"] \
        [--out results/transfer] [--resume]

Every dataset is a RecBole atomic dataset given by its YAML (``FOLDER/NAME/NAME.yaml``, as ``srt-prep``
writes them: ``srt-prep merge`` builds a multi-domain corpus with the target's users removed). Every
row is :func:`recbole_srt.pipeline.run` (full ranking, best epoch on valid NDCG@10, tested). Each
finished row is appended to ``OUT/runs.jsonl`` at once, and each pre-training's checkpoint is kept, so
``--resume`` continues an interrupted benchmark where it stopped. Writes ``OUT/transfer.csv`` (a row per
run), ``OUT/transfer.md`` (per target and size: mean ± std over seeds) and ``OUT/transfer_curve.png``
(valid NDCG@10 per target epoch, seed 0). docs/benchmarks.md has the details.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from recbole_srt import finetune, make_config, run
from recbole_srt.transfer import STRATEGIES

logger = logging.getLogger("benchmarks.transfer")
METRICS = ("recall@10", "ndcg@10")


def yaml_mapping(text: str, option: str) -> dict:
    """A ``--settings``-style option: a YAML mapping of RecBole/SRT settings."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{option} is not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a YAML mapping of settings, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--pretrain", type=Path, required=True, help="YAML of the pre-training dataset")
    p.add_argument(
        "--target", type=Path, action="append", required=True, help="YAML of a target (repeatable)"
    )
    p.add_argument("--hidden-size", type=int, nargs="+", default=[64], help="one or more widths")
    p.add_argument("--seeds", type=int, default=3, help="seeds of every fine-tuned and from-scratch row")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--pretrain-epochs", type=int, default=50, help="cap (early stopping, patience 5)")
    p.add_argument(
        "--epochs", type=int, default=20, help="cap of every target row (early stopping, patience 5)"
    )
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--settings", default="{}", help="YAML mapping of settings for every run")
    p.add_argument("--pretrain-settings", default="{}", help="YAML mapping of settings for pre-training only")
    # On a shared 2-core machine 2 threads were 4.5x slower per batch than 1 (0.33 s vs 1.46 s).
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0 = torch's default)")
    p.add_argument("--out", type=Path, default=Path("results/transfer"))
    p.add_argument("--resume", action="store_true", help="keep the finished rows and pre-trainings of --out")
    args = p.parse_args(argv)
    counts = {"--seeds": args.seeds, "--pretrain-epochs": args.pretrain_epochs, "--epochs": args.epochs,
              "--hidden-size": min(args.hidden_size), "--n-layers": args.n_layers}  # fmt: skip
    low = [name for name, value in counts.items() if value < 1]
    if low:
        p.error(f"{', '.join(low)} must be at least 1")
    if args.threads < 0:
        p.error("--threads must be at least 0")
    for path in [args.pretrain, *args.target]:
        if not path.is_file():
            p.error(f"{path}: no such dataset YAML (FOLDER/NAME/NAME.yaml, as srt-prep writes)")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file, not a folder")
    try:
        args.settings = yaml_mapping(args.settings, "--settings")
        args.pretrain_settings = yaml_mapping(args.pretrain_settings, "--pretrain-settings")
    except ValueError as error:
        p.error(str(error))
    return args


def model_settings(args: argparse.Namespace, hidden: int) -> dict:
    """Width, depth and evaluation shared by every run of one width; ``--settings`` on top."""
    return {
        "hidden_size": hidden,
        "inner_size": 4 * hidden,
        "n_layers": args.n_layers,
        "n_heads": max(1, hidden // 32),
        "eval_batch_size": 4096,
        "stopping_step": 5,
        "valid_metric": "NDCG@10",
        "metrics": ["Recall", "NDCG"],
        "topk": [10],
        "checkpoint_dir": str(args.out / "saved"),
        "show_progress": False,
        "state": "WARNING",
        **args.settings,
    }


def row(target: str, hidden: int, init: str, seed: int, record, zero_shot: bool = False) -> dict:
    """One run: its best-on-valid epoch, or (``zero_shot``) the pre-trained weights before any update."""
    valid, test = (
        (record.zero_shot_valid, record.zero_shot_test) if zero_shot else (record.best_valid, record.test)
    )
    start = [record.zero_shot_valid["ndcg@10"]] if record.zero_shot_valid else []
    return {
        "target": target,
        "hidden": hidden,
        "init": init,
        "seed": seed,
        "epochs": 0 if zero_shot else len(record.epochs),
        "best_epoch": 0 if zero_shot else record.best_epoch,
        "non_embedding": record.params.non_embedding,
        "valid_ndcg@10": valid["ndcg@10"],
        **{f"test_{m}": test[m] for m in METRICS},
        "seconds": 0 if zero_shot else round(record.wall_s),
        "curve": start if zero_shot else [*start, *record.valid_curve],
    }


class Ledger:
    """``OUT/runs.jsonl``: one line per finished run, keyed, so a resumed benchmark skips what it did."""

    def __init__(self, out: Path, resume: bool):
        self.path = out / "runs.jsonl"
        if not resume:
            self.path.unlink(missing_ok=True)
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        self.rows = [json.loads(line) for line in lines if line.strip()]

    @staticmethod
    def key(entry: dict) -> tuple:
        return entry["target"], entry["hidden"], entry["init"], entry["seed"]

    def has(self, **key) -> bool:
        return any(self.key(r) == self.key(key) for r in self.rows)

    def add(self, entry: dict) -> None:
        self.rows.append(entry)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")


def dataset(path: Path) -> tuple[str, list[str]]:
    """RecBole's dataset name and config files for a dataset YAML ``FOLDER/NAME/NAME.yaml``."""
    return path.stem, [str(path.resolve())]


def pretrain(args: argparse.Namespace, hidden: int) -> dict:
    """Pre-train SRT of width ``hidden`` (or, with ``--resume``, reuse the one a previous run saved)."""
    summary = args.out / f"pretrain-H{hidden}.json"
    if args.resume and summary.is_file():
        done = json.loads(summary.read_text())
        if Path(done["checkpoint"]).is_file():
            return done
    name, files = dataset(args.pretrain)
    settings = {**model_settings(args, hidden), "epochs": args.pretrain_epochs, **args.pretrain_settings}
    record = run(make_config("SRT", name, files, settings)).record
    done = {"hidden": hidden, "checkpoint": record.checkpoint, "epochs": len(record.epochs),
            "best_epoch": record.best_epoch, "seconds": round(record.wall_s), "dataset": name,
            "non_embedding": record.params.non_embedding, "test": record.test,
            "settings": settings}  # fmt: skip
    summary.write_text(json.dumps(done, indent=2, default=str))
    return done


def target_rows(args: argparse.Namespace, hidden: int, target: Path, checkpoint: str, ledger: Ledger) -> None:
    """Zero-shot, every strategy and SRT from scratch on ``target``, each seed; each row kept at once."""
    name, files = dataset(target)
    for seed in range(args.seeds):
        settings = {**model_settings(args, hidden), "epochs": args.epochs, "seed": seed}
        for strategy in args.strategies:
            init = f"pre-trained, {strategy}"
            if ledger.has(target=name, hidden=hidden, init=init, seed=seed):
                continue
            record = finetune(checkpoint, name, files, {**settings, "finetune_strategy": strategy}).record
            if not ledger.has(target=name, hidden=hidden, init="zero-shot", seed=0):
                ledger.add(row(name, hidden, "zero-shot", 0, record, zero_shot=True))
            ledger.add(row(name, hidden, init, seed, record))
            logger.info(
                "%s H%d seed %d %s: test NDCG@10 %.4f", name, hidden, seed, strategy, record.test["ndcg@10"]
            )
        if not ledger.has(target=name, hidden=hidden, init="scratch", seed=seed):
            record = run(make_config("SRT", name, files, settings), zero_shot=True).record
            ledger.add(row(name, hidden, "scratch", seed, record))
            logger.info(
                "%s H%d seed %d scratch: test NDCG@10 %.4f", name, hidden, seed, record.test["ndcg@10"]
            )


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per target, width and start: mean ± std (over seeds) of test NDCG@10 and Recall@10."""
    grouped = rows.groupby(["target", "hidden", "non_embedding", "init"], sort=False)
    table = grouped.agg(seeds=("seed", "nunique"), best_epoch=("best_epoch", "mean"),
                        **{f"{m}_mean": (f"test_{m}", "mean") for m in METRICS},
                        **{f"{m}_std": (f"test_{m}", "std") for m in METRICS})  # fmt: skip
    return table.reset_index()


def plot_curves(rows: pd.DataFrame, path: Path) -> None:
    """Valid NDCG@10 per target epoch (seed 0), a panel per (target, width)."""
    panels = rows[["target", "hidden"]].drop_duplicates().values.tolist()
    fig = Figure(figsize=(6 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=False)
    for ax, (target, hidden) in zip(axes[0], panels, strict=True):
        for _, r in rows[(rows.target == target) & (rows.hidden == hidden) & (rows.seed == 0)].iterrows():
            if r["epochs"] == 0:
                ax.scatter([0], r["curve"], color="black", zorder=3, label="zero-shot")
            else:
                ax.plot(range(len(r["curve"])), r["curve"], marker="o", ms=3, label=r["init"])
        ax.set(xlabel="epochs on the target", ylabel="valid NDCG@10", title=f"{target}, hidden {hidden}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fine-tuning a pre-trained SRT vs training it from scratch (seed 0)")
    fig.savefig(path, dpi=120)


def write_results(ledger: Ledger, header: list[str], out: Path) -> str:
    rows = pd.DataFrame(ledger.rows)
    rows.assign(curve=rows["curve"].map(lambda c: ";".join(f"{v:.4f}" for v in c))).to_csv(
        out / "transfer.csv", index=False
    )
    table = summary_table(rows).to_markdown(index=False, floatfmt=".4f", intfmt=",")
    text = "\n".join(header) + "\n\n" + table + "\n"
    (out / "transfer.md").write_text(text)
    plot_curves(rows, out / "transfer_curve.png")
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _main(args)
    except (ValueError, OSError) as error:  # bad data, settings or folders: one line
        print(f"transfer: error: {error}", file=sys.stderr)
        return 2
    return 0


def _main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(args.out, args.resume)
    header = [f"Pre-training: {args.pretrain.stem}; targets: {', '.join(t.stem for t in args.target)}; "
              f"{args.seeds} seeds per fine-tuned and from-scratch row."]  # fmt: skip
    for hidden in args.hidden_size:
        pre = pretrain(args, hidden)
        header.append(
            f"hidden {hidden}: pre-trained {pre['epochs']} epochs (best {pre['best_epoch']}), "
            f"{pre['seconds']} s; {pre['non_embedding']:,} non-embedding parameters; its own test NDCG@10 "
            f"{pre['test']['ndcg@10']:.4f}."
        )
        logger.info(header[-1])
        for target in args.target:
            target_rows(args, hidden, target, pre["checkpoint"], ledger)
            write_results(ledger, header, args.out)  # a partial table survives an interrupted run
    header.append(
        f"Wall time of this invocation {(time.perf_counter() - start) / 60:.1f} min on {os.cpu_count()} CPU "
        f"cores ({torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f} at the end)."
    )
    print(write_results(ledger, header, args.out))
    print(f"wrote {args.out}/transfer.csv, transfer.md, transfer_curve.png, runs.jsonl")


if __name__ == "__main__":
    sys.exit(main())
