"""Seconds per training epoch of SRT vs RecBole's SASRec (and BERT4Rec) at equal sizes.

    python benchmarks/epoch_time.py [--dataset ml-100k] [--models SRT SASRec] [--steps 20]
                                    [--hidden-size 64] [--out results/epoch_time]

Times ``--steps`` real optimiser steps (after 2 warm-up steps) of each model on the dataset's
training loader, through RecBole's own ``Trainer`` loss/backward/step, and extrapolates to
a full epoch (steps/epoch × s/step). Prints a markdown table, writes ``epoch_time.csv`` and
``epoch_time.json``. Peak RSS is the process's, so run one model per process for exact memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import recbole_srt  # noqa: F401  (registers SRT)


def time_model(model_name: str, dataset: str, hidden_size: int, steps: int, extra: dict) -> dict:
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    config = Config(
        model=model_name,
        dataset=dataset,
        config_dict={"hidden_size": hidden_size, "show_progress": False, "state": "ERROR", **extra},
    )
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model(model_name)(config, train_data._dataset).to(config["device"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    batches = iter(train_data)
    model.train()

    def step() -> None:
        optimizer.zero_grad()
        with torch.autocast(device_type=config["device"].type, enabled=config["enable_amp"]):
            loss = model.calculate_loss(next(batches).to(config["device"]))
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - start) / steps
    n_batches = len(train_data)
    return {
        "model": model_name,
        "dataset": dataset,
        "hidden_size": hidden_size,
        "n_layers": config["n_layers"],
        "train_batch_size": config["train_batch_size"],
        "loss_type": config["loss_type"],
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "s_per_step": round(per_step, 4),
        "steps_per_epoch": n_batches,
        "s_per_epoch_est": round(per_step * n_batches, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--models", nargs="+", default=["SRT", "SASRec"])
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps per model")
    parser.add_argument("--batch-size", type=int, default=512, help="train_batch_size for every model")
    parser.add_argument("--out", type=Path, default=Path("results/epoch_time"))
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config would read this script's flags as overrides

    extra = {"train_batch_size": args.batch_size}
    rows = [time_model(m, args.dataset, args.hidden_size, args.steps, extra) for m in args.models]
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "epoch_time.csv", index=False)
    (args.out / "epoch_time.json").write_text(json.dumps(rows, indent=2))
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
