"""Transfer benchmark: pre-train SRT on some categories, then measure it on a target dataset.

    python benchmarks/transfer.py --target-input PATH/TO/scientific-unisrec \
        --category 2018:Magazine_Subscriptions --input PATH/TO/amazon2018-magazine-subscriptions \
        --category 2014:Digital_Music:5core --input PATH/TO/amazon2014-digital-music-truncated \
        [--hidden-size 32 128 --pretrain-epochs 50 --epochs 10 --out results/transfer]

Data is cached under ``--work`` (the pre-training mix converted with the leakage guard: the target's
users are excluded). For each ``--hidden-size`` (does a larger pre-trained model fine-tune better?):
pre-train SRT on the mix, then on the target, with one ``--epochs`` budget for every row: zero-shot,
each fine-tuning strategy (:func:`recbole_srt.finetune`), SRT and SASRec from scratch. Every row is
:func:`recbole_srt.pipeline.run` (full ranking, best epoch on valid NDCG@10, tested). Writes
``OUT/transfer.csv``, ``OUT/transfer.md`` and ``OUT/transfer_curve.png`` (valid NDCG@10 per target
epoch; epoch 0 is the model before any update); docs/benchmarks.md has the details.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dataset_prep import registry
from dataset_prep.convert import ConvertOptions, convert
from dataset_prep.errors import PrepError
from dataset_prep.unisrec import import_unisrec
from recbole_srt import finetune, make_config, run
from recbole_srt.transfer import STRATEGIES

logger = logging.getLogger("benchmarks.transfer")
METRICS = ("recall@10", "ndcg@10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument(
        "--category", action="append", required=True, help="RELEASE:CATEGORY[:SOURCE] to pre-train on"
    )
    p.add_argument("--input", action="append", type=Path, required=True, help="folders with those files")
    p.add_argument(
        "--min-inter", type=int, default=2, help="k-core of the pre-training mix (users and items)"
    )
    p.add_argument("--target-input", type=Path, required=True, help="UniSRec folder of the target")
    p.add_argument("--target", default="scientific", help="target dataset name")
    p.add_argument("--pretrain-epochs", type=int, default=50, help="cap (early stopping, patience 10)")
    p.add_argument("--epochs", type=int, default=4, help="target epochs of every fine-tuned or scratch row")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--hidden-size", type=int, nargs="+", default=[64], help="one or more widths")
    p.add_argument("--no-sasrec", action="store_true", help="skip the SASRec-from-scratch rows")
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--max-seq-len", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    # On a shared 2-core machine 2 threads were 4.5x slower per batch than 1 (0.33 s vs 1.46 s).
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0 = torch's default)")
    p.add_argument("--work", type=Path, default=Path("results/transfer/data"), help="converted data (cached)")
    p.add_argument("--out", type=Path, default=Path("results/transfer"))
    args = p.parse_args(argv)
    counts = {"--min-inter": args.min_inter, "--pretrain-epochs": args.pretrain_epochs,
              "--epochs": args.epochs, "--hidden-size": min(args.hidden_size), "--n-layers": args.n_layers,
              "--max-seq-len": args.max_seq_len, "--batch-size": args.batch_size}  # fmt: skip
    low = [name for name, value in counts.items() if value < 1]
    if low:
        p.error(f"{', '.join(low)} must be at least 1")
    if args.threads < 0 or not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        p.error("--threads must be at least 0 and --learning-rate a positive number")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file, not a folder")
    return args


def prepare_data(args: argparse.Namespace) -> tuple[Path, Path, dict]:
    """The target's and the pre-training mix's dataset YAMLs, and the mix's conversion report."""
    work = args.work.resolve()
    target_yaml = work / args.target / f"{args.target}.yaml"
    if not target_yaml.is_file():  # importing again would touch the guard's input and force a re-conversion
        import_unisrec(args.target_input, args.target, work, prefix=None, max_seq_len=50)
    options = ConvertOptions(
        entries=[registry.parse_entry(spec, None, None) for spec in args.category],
        inputs=args.input,
        output=work,
        name="pretrain",
        min_user_inter=args.min_inter,
        min_item_inter=args.min_inter,
        exclude_users_of=[work / args.target / f"{args.target}.inter"],
    )
    report = convert(options)
    return target_yaml, work / "pretrain" / "pretrain.yaml", report


def model_settings(args: argparse.Namespace, hidden: int) -> dict:
    """Width, depth and budget shared by every run of one width."""
    return {
        "hidden_size": hidden,
        "inner_size": 4 * hidden,
        "n_layers": args.n_layers,
        "n_heads": 2,
        "MAX_ITEM_LIST_LENGTH": args.max_seq_len,
        "train_batch_size": args.batch_size,
        "eval_batch_size": 4096,
        "learning_rate": args.learning_rate,
        "stopping_step": 100,  # the epoch budget decides, not early stopping
        "valid_metric": "NDCG@10",
        "metrics": ["Recall", "NDCG"],
        "topk": [10],
        "checkpoint_dir": str(args.out / "saved"),
        "show_progress": False,
        "state": "WARNING",
    }


def row(name: str, hidden: int, init: str, trains: str, record, zero_shot: bool = False) -> dict:
    """One table row: the run's best-on-valid epoch, or (``zero_shot``) the weights before any update."""
    start = record.zero_shot_valid["ndcg@10"]
    valid, test = (
        (record.zero_shot_valid, record.zero_shot_test) if zero_shot else (record.best_valid, record.test)
    )
    return {
        "model": name,
        "hidden": hidden,
        "init": init,
        "trains": trains,
        "epochs": 0 if zero_shot else len(record.epochs),
        "parameters": record.params.trainable,
        "valid_ndcg@10": valid["ndcg@10"],
        **{f"test_{m}": test[m] for m in METRICS},
        "seconds": 0 if zero_shot else round(record.wall_s),
        "curve": [start] if zero_shot else [start, *record.valid_curve],
    }


def target_rows(args: argparse.Namespace, hidden: int, target_yaml: Path, checkpoint: str) -> list[dict]:
    """Zero-shot, every strategy, SRT (and SASRec) from scratch on the target; one row each."""
    settings = {**model_settings(args, hidden), "epochs": args.epochs}
    rows = []
    for strategy in args.strategies:
        overrides = {**settings, "finetune_strategy": strategy}
        record = finetune(checkpoint, args.target, [str(target_yaml)], overrides).record
        if not rows:
            rows.append(row("SRT", hidden, "pre-trained", "nothing (zero-shot)", record, zero_shot=True))
        trains = " → ".join(stage.name for stage in record.stages)
        rows.append(row("SRT", hidden, f"pre-trained, {strategy}", trains, record))
        logger.info("hidden %d, %s: test NDCG@10 %.4f", hidden, strategy, record.test["ndcg@10"])
    for name in ("SRT",) if args.no_sasrec else ("SRT", "SASRec"):
        record = run(make_config(name, args.target, [str(target_yaml)], settings), zero_shot=True).record
        rows.append(row(name, hidden, "scratch", "all", record))
        logger.info("hidden %d, %s from scratch: test NDCG@10 %.4f", hidden, name, record.test["ndcg@10"])
    return rows


def plot_curves(rows: list[dict], path: Path) -> None:
    """Valid NDCG@10 per target epoch, one panel per width."""
    widths = sorted({r["hidden"] for r in rows})
    fig = Figure(figsize=(7 * len(widths), 4.2))
    axes = fig.subplots(1, len(widths), squeeze=False, sharey=True)
    for ax, hidden in zip(axes[0], widths, strict=True):
        for r in (r for r in rows if r["hidden"] == hidden):
            if r["epochs"] == 0:
                ax.scatter([0], r["curve"], color="black", zorder=3, label="SRT zero-shot")
            else:
                ax.plot(range(len(r["curve"])), r["curve"], marker="o", label=f"{r['model']} {r['init']}")
        ax.set(xlabel="epochs on the target", ylabel="valid NDCG@10", title=f"hidden {hidden}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fine-tuning vs from scratch")
    fig.savefig(path, dpi=120)


def write_results(rows: list[dict], header: list[str], out: Path) -> str:
    frame = pd.DataFrame(rows)
    csv = frame.assign(curve=frame["curve"].map(lambda c: ";".join(f"{v:.4f}" for v in c)))
    csv.to_csv(out / "transfer.csv", index=False)
    table = frame.drop(columns="curve").to_markdown(index=False, floatfmt=".4f", intfmt=",")
    text = "\n".join(header) + "\n\n" + table + "\n"
    (out / "transfer.md").write_text(text)
    plot_curves(rows, out / "transfer_curve.png")
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _main(args)
    except (PrepError, ValueError, OSError) as error:  # bad data, settings or folders: one line
        print(f"transfer: error: {error}", file=sys.stderr)
        return 2
    return 0


def _main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()

    target_yaml, pretrain_yaml, report = prepare_data(args)
    args.out.mkdir(parents=True, exist_ok=True)
    logger.info("pre-training mix: %s interactions, %s users, %s items", report["rows"]["kept"],
                report["users"]["after"], report["items"]["after"])  # fmt: skip
    guard = report["users"]["excluded"], report["dropped"]["excluded_user"]
    header = [
        f"Pre-training: {' + '.join(args.category)}, {args.min_inter}-core: "
        f"{report['rows']['kept']:,} interactions, {report['users']['after']:,} users, "
        f"{report['items']['after']:,} items; leakage guard removed {guard[0]:,} users of {args.target} "
        f"({guard[1]:,} interactions). Up to {args.pretrain_epochs} epochs, early stopping on the mix's "
        "valid NDCG@10 (patience 10).",
    ]
    rows = []
    for hidden in args.hidden_size:
        settings = {**model_settings(args, hidden), "epochs": args.pretrain_epochs, "stopping_step": 10}
        pre = run(make_config("SRT", "pretrain", [str(pretrain_yaml)], settings)).record
        header.append(
            f"hidden {hidden}: pre-trained {len(pre.epochs)} epochs (best {pre.best_epoch}), "
            f"{pre.wall_s:.0f} s; {pre.params.non_embedding:,} non-embedding parameters; its own test "
            f"NDCG@10 {pre.test['ndcg@10']:.4f}."
        )
        logger.info(header[-1])
        rows += target_rows(args, hidden, target_yaml, pre.checkpoint)
        write_results(rows, header, args.out)  # a partial table survives an interrupted run
    seconds = time.perf_counter() - start
    header += [
        f"Target: {args.target}, leave-one-out, full ranking; {args.epochs} target epochs per row, "
        f"best epoch on valid NDCG@10. {args.n_layers} layers, "
        f"max length {args.max_seq_len}, batch {args.batch_size}, lr {args.learning_rate}.",
        f"Total wall time {seconds / 60:.1f} min on {os.cpu_count()} CPU cores "
        f"({torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f} at the end).",
    ]
    print(write_results(rows, header, args.out))
    print(f"wrote {args.out}/transfer.csv, transfer.md, transfer_curve.png")


if __name__ == "__main__":
    sys.exit(main())
