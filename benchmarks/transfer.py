"""Transfer benchmark: pre-train SRT on some categories, then measure it on a target dataset.

    python benchmarks/transfer.py            # shared data: Magazine 2018 + Digital_Music 2014 -> Scientific
    python benchmarks/transfer.py --pretrain-epochs 10 --epochs 5 --out results/transfer

1. data (cached under ``--work``): the target through ``srt-prep import-unisrec``, the pre-training
   mix through ``srt-prep convert`` with the leakage guard ``--exclude-users-of`` the target's users;
2. pre-train SRT on the mix (``--pretrain-epochs``);
3. on the target, with the same ``--epochs`` budget for every row: zero-shot (no update), each
   fine-tuning strategy from the pre-trained weights, SRT from scratch and SASRec from scratch
   (RecBole's, same width and depth).

Every run is RecBole's Trainer and full-ranking evaluator: best epoch on valid NDCG@10, tested.
Writes ``OUT/transfer.csv``, ``OUT/transfer.md`` (the table) and ``OUT/transfer_curve.png`` (valid
NDCG@10 per target epoch; epoch 0 is the model before any target update).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import matplotlib
import pandas as pd
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, init_seed

import recbole_srt  # noqa: F401  (registers SRT)
from dataset_prep.cli import main as srt_prep
from recbole_srt.serve import load_srt_checkpoint
from recbole_srt.transfer import (
    STRATEGIES,
    RunResult,
    Stage,
    evaluate,
    load_pretrained,
    plan_stages,
    train_stages,
    transfer_config,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

logger = logging.getLogger("benchmarks.transfer")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PRETRAIN_CATEGORIES = ["2018:Magazine_Subscriptions", "2014:Digital_Music:5core"]
PRETRAIN_INPUTS = [
    SHARED / "amazon2018-magazine-subscriptions",
    SHARED / "amazon2014-digital-music-truncated",
]
METRICS = ("recall@10", "ndcg@10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--category", action="append", help=f"pre-training category (default {PRETRAIN_CATEGORIES})"
    )
    p.add_argument("--input", action="append", type=Path, help="folders with the pre-training files")
    p.add_argument(
        "--min-inter", type=int, default=2, help="k-core of the pre-training mix (users and items)"
    )
    p.add_argument("--target-input", type=Path, default=SHARED / "scientific-unisrec", help="UniSRec folder")
    p.add_argument("--target", default="scientific", help="target dataset name")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=4, help="target epochs of every fine-tuned or scratch row")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--max-seq-len", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    # On a shared 2-core machine 2 threads were 4.5x slower per batch than 1 (0.33 s vs 1.46 s).
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0 = torch's default)")
    p.add_argument("--work", type=Path, default=Path("results/transfer/data"), help="converted data (cached)")
    p.add_argument("--out", type=Path, default=Path("results/transfer"))
    return p.parse_args(argv)


def prepare_data(args: argparse.Namespace) -> tuple[Path, Path, dict]:
    """The target's and the pre-training mix's dataset YAMLs, and the mix's conversion report."""
    work = args.work.resolve()
    target_yaml = work / args.target / f"{args.target}.yaml"
    if not target_yaml.is_file():  # importing again would touch the guard's input and force a re-conversion
        rc = srt_prep(
            [
                "import-unisrec",
                "--input",
                str(args.target_input),
                "--name",
                args.target,
                "--output",
                str(work),
            ]
        )
        if rc:
            raise SystemExit(rc)
    convert = ["convert", "--name", "pretrain", "--output", str(work)]
    for category in args.category or PRETRAIN_CATEGORIES:
        convert += ["--category", category]
    for folder in args.input or PRETRAIN_INPUTS:
        convert += ["--input", str(folder)]
    convert += ["--min-user-inter", str(args.min_inter), "--min-item-inter", str(args.min_inter)]
    convert += ["--exclude-users-of", str(work / args.target / f"{args.target}.inter")]
    rc = srt_prep(convert)
    if rc:
        raise SystemExit(rc)
    report = json.loads((work / "pretrain" / "report.json").read_text())
    return target_yaml, work / "pretrain" / "pretrain.yaml", report


def model_settings(args: argparse.Namespace) -> dict:
    """Width, depth and budget shared by every run."""
    return {
        "hidden_size": args.hidden_size,
        "inner_size": 4 * args.hidden_size,
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


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def row(name: str, init: str, trains: str, model, run: RunResult, start_valid: float) -> dict:
    return {
        "model": name,
        "init": init,
        "trains": trains,
        "epochs": len(run.curve),
        "parameters": n_params(model),
        "valid_ndcg@10": run.best_valid["ndcg@10"],
        **{f"test_{m}": run.test[m] for m in METRICS},
        "seconds": round(run.seconds),
        "curve": [start_valid, *run.curve],
    }


def pretrain(args: argparse.Namespace, dataset_yaml: Path) -> RunResult:
    config = Config(
        model="SRT",
        dataset="pretrain",
        config_file_list=[str(dataset_yaml)],
        config_dict={**model_settings(args), "epochs": args.pretrain_epochs},
    )
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    model = get_model("SRT")(config, train_data._dataset)
    stage = Stage("all", ("",), args.pretrain_epochs, args.learning_rate)
    return train_stages(config, model, train_data, valid_data, test_data, [stage])


def target_runs(args: argparse.Namespace, target_yaml: Path, checkpoint: str) -> list[dict]:
    """Zero-shot, every strategy, SRT and SASRec from scratch on the target; one row each."""
    pretrained = load_srt_checkpoint(checkpoint)
    settings = {**model_settings(args), "epochs": args.epochs}
    config = transfer_config(pretrained["config"], args.target, [str(target_yaml)], settings)
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    data = (train_data, valid_data, test_data)

    model = load_pretrained(config, train_data._dataset, pretrained["state_dict"])
    start = time.perf_counter()
    zero_valid, zero_test = evaluate(config, model, valid_data), evaluate(config, model, test_data)
    zero = RunResult([], zero_valid, zero_test, checkpoint, time.perf_counter() - start)
    rows = [row("SRT", "pre-trained", "nothing (zero-shot)", model, zero, zero_valid["ndcg@10"])]
    logger.info("zero-shot: test %s", zero_test)

    for strategy in args.strategies:
        config["finetune_strategy"], config["epochs"] = strategy, args.epochs
        init_seed(config["seed"], config["reproducibility"])
        model = load_pretrained(config, train_data._dataset, pretrained["state_dict"])
        stages = plan_stages(model, config)
        run = train_stages(config, model, *data, stages)
        trains = " → ".join(stage.name for stage in stages)
        rows.append(row("SRT", f"pre-trained, {strategy}", trains, model, run, zero_valid["ndcg@10"]))

    for name in ("SRT", "SASRec"):
        scratch = Config(
            model=name, dataset=args.target, config_file_list=[str(target_yaml)], config_dict=settings
        )
        init_seed(scratch["seed"], scratch["reproducibility"])
        model = get_model(name)(scratch, train_data._dataset)
        start_valid = evaluate(scratch, model, valid_data)["ndcg@10"]
        run = train_stages(scratch, model, *data, [Stage("all", ("",), args.epochs, args.learning_rate)])
        rows.append(row(name, "scratch", "all", model, run, start_valid))
    return rows


def plot_curves(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows[1:]:
        ax.plot(range(len(r["curve"])), r["curve"], marker="o", label=f"{r['model']} {r['init']}")
    ax.scatter([0], [rows[0]["curve"][0]], color="black", zorder=3, label="SRT zero-shot")
    ax.set(xlabel="epochs on the target", ylabel="valid NDCG@10", title="Fine-tuning vs from scratch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(rows: list[dict], header: list[str], out: Path) -> str:
    frame = pd.DataFrame(rows)
    csv = frame.assign(curve=frame["curve"].map(lambda c: ";".join(f"{v:.4f}" for v in c)))
    csv.to_csv(out / "transfer.csv", index=False)
    table = frame.drop(columns="curve").to_markdown(index=False, floatfmt=".4f", intfmt=",")
    text = "\n".join(header) + "\n\n" + table + "\n"
    (out / "transfer.md").write_text(text)
    plot_curves(rows, out / "transfer_curve.png")
    return text


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv: not this script's options
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ours = ("recbole_srt", "benchmarks")  # RecBole's own INFO lines (per-epoch loss, ...) stay quiet
    logging.getLogger().handlers[0].addFilter(
        lambda r: r.name.startswith(ours) or r.levelno >= logging.WARNING
    )
    start = time.perf_counter()

    target_yaml, pretrain_yaml, report = prepare_data(args)
    logger.info(
        "pre-training mix: %s interactions, %s users, %s items",
        report["rows"]["kept"],
        report["users"]["after"],
        report["items"]["after"],
    )
    pre = pretrain(args, pretrain_yaml)
    rows = target_runs(args, target_yaml, pre.checkpoint)
    seconds = time.perf_counter() - start

    guard = report["users"]["excluded"], report["dropped"]["excluded_user"]
    header = [
        f"Pre-training: {' + '.join(args.category or PRETRAIN_CATEGORIES)}, {args.min_inter}-core: "
        f"{report['rows']['kept']:,} interactions, {report['users']['after']:,} users, "
        f"{report['items']['after']:,} items; leakage guard removed {guard[0]:,} users of {args.target} "
        f"({guard[1]:,} interactions). {args.pretrain_epochs} epochs, {pre.seconds:.0f} s, "
        f"its own test NDCG@10 {pre.test['ndcg@10']:.4f}.",
        f"Target: {args.target}, leave-one-out, full ranking; {args.epochs} target epochs per row, "
        f"best epoch on valid NDCG@10. hidden {args.hidden_size}, {args.n_layers} layers, "
        f"max length {args.max_seq_len}, batch {args.batch_size}, lr {args.learning_rate}.",
        f"Total wall time {seconds / 60:.1f} min on {os.cpu_count()} CPU cores "
        f"({torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f} at the end).",
    ]
    print(write_results(rows, header, args.out))
    print(f"wrote {args.out}/transfer.csv, transfer.md, transfer_curve.png")


if __name__ == "__main__":
    main()
