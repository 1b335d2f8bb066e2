"""One scaling-sweep trial inside a Ray Tune worker (:func:`run_trial`), for ``benchmarks/sweep.py``.

It lives in the package so that every Ray worker, on any node of a cluster, can import it. A trial
is one :func:`recbole_srt.pipeline.run` (one model size, one data fraction, one seed) with:

* ``data_fraction``: the training sequences of a seeded random fraction of the users (valid and
  test stay whole, so every fraction is scored on the same data);
* ``measure_flops``: the FLOPs (forward + backward) and the paper's forward MACs of one training
  epoch, measured on real batches;
* ``on_epoch``: one row per epoch reported to Ray Tune (train loss, valid metrics and loss,
  cumulative targets, FLOPs and wall time), so a scheduler such as ASHA can stop the trial early.
  When the epoch is the best so far, the test split is scored with the same weights and the model
  is checkpointed (SRT's weights-only format, :mod:`recbole_srt.checkpoint`, ``model.pth``); Ray
  keeps that checkpoint, and a restarted trial resumes from it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from ray import tune

import recbole_srt  # noqa: F401  (registers SRT with RecBole in this worker process)
from recbole_srt.pipeline import Run, make_config, run
from recbole_srt.trainer import EpochStats

CHECKPOINT_FILE = "model.pth"
PROGRESS_FILE = "progress.json"


class InjectedFailure(RuntimeError):
    """Raised by trials listed in a preset's ``fail_trials`` (a test hook for retries and resume).

    ``always``: at the start of every attempt (the trial ends as ERROR); ``once``: right after the
    first epoch is reported and checkpointed, unless resumed from a checkpoint (the retry resumes).
    """


@dataclass
class Progress:
    """Cumulative counters of a trial, carried in its checkpoint across restarts."""

    train_tokens: int = 0
    flops: int = 0
    macs: int = 0
    wall_time_s: float = 0.0
    best_epoch: int = -1


def recbole_settings(spec: dict) -> dict:
    """The trial's RecBole ``config_dict``: the preset's settings plus this grid point."""
    settings = {
        **spec["recbole"],
        "n_layers": spec["n_layers"],
        "hidden_size": spec["hidden_size"],
        "n_heads": spec["n_heads"],
        "inner_size": spec["inner_size"],
        "seed": spec["seed"],
        # Ray assigns this trial's GPUs through CUDA_VISIBLE_DEVICES; RecBole overwrites that
        # variable with gpu_id, so hand it the same value ("" = CPU).
        "gpu_id": os.environ.get("CUDA_VISIBLE_DEVICES", "") if spec["gpu"] > 0 else "",
        "use_gpu": spec["gpu"] > 0,
        "checkpoint_dir": str(Path.cwd() / "recbole_checkpoints"),
        "eval_step": 1,
    }
    if spec.get("data_path"):
        settings["data_path"] = spec["data_path"]
    return settings


def _report(row: dict, trainer, progress: Progress, epoch: int, checkpoint: bool) -> None:
    """Send one row to Ray Tune, with a checkpoint (model + progress) when ``checkpoint``."""
    if not checkpoint:
        tune.report(row)
        return
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as folder:
        trainer._save_checkpoint(epoch, verbose=False, saved_model_file=os.path.join(folder, CHECKPOINT_FILE))
        Path(folder, PROGRESS_FILE).write_text(json.dumps(asdict(progress)))
        tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))


def run_trial(config: dict) -> None:
    """Ray Tune function trainable: train ``config["trial"]`` (a grid point from ``benchmarks/sweep.py``)."""
    spec = config["trial"]
    torch.set_num_threads(max(1, int(spec["cpu"])))
    if spec["fail"] == "always":
        raise InjectedFailure(f"trial {spec['name']} is listed in fail_trials: always (test hook)")
    setup_start = time.perf_counter()
    recbole_config = make_config(spec["model"], spec["dataset"], spec["config_files"], recbole_settings(spec))

    checkpoint = tune.get_checkpoint()
    with contextlib.ExitStack() as stack:
        progress, resume = Progress(), None
        if checkpoint is not None:
            folder = stack.enter_context(checkpoint.as_directory())
            resume = os.path.join(folder, CHECKPOINT_FILE)
            progress = Progress(**json.loads(Path(folder, PROGRESS_FILE).read_text()))
        _train(recbole_config, spec, progress, resume, setup_start)


def _train(recbole_config, spec: dict, progress: Progress, resume: str | None, setup_start: float) -> None:
    """Run the trial from ``progress`` (and the ``resume`` checkpoint), reporting every epoch to Ray."""
    wall_offset, fit_start = progress.wall_time_s, None
    fail_after_report = spec["fail"] == "once" and resume is None  # a retry resumes from a checkpoint

    def on_epoch(result: Run, stats: EpochStats) -> None:
        nonlocal fit_start
        record, trainer = result.record, result.trainer
        fit_start = fit_start or time.perf_counter() - stats.train_seconds - stats.valid_seconds
        progress.train_tokens += stats.train_targets
        progress.flops += record.flops_per_epoch
        progress.macs += record.macs_per_epoch
        test, test_loss = dict.fromkeys([*stats.valid, *stats.valid_sampled], math.nan), math.nan
        if stats.is_best:
            progress.best_epoch = stats.epoch
            test = {**trainer.evaluate(result.test_data, load_best_model=False), **trainer.eval_sampled}
            test_loss = trainer.eval_loss
        progress.wall_time_s = wall_offset + time.perf_counter() - fit_start
        row = {
            **{f"params_{k}": v for k, v in asdict(record.params).items()},
            "params_paper": record.params.paper,
            "n_items": record.n_items,
            "max_epochs": result.config["epochs"],
            "train_sequences": record.train_sequences,
            "flops_per_epoch": record.flops_per_epoch,
            "device": record.device,
            "setup_time_s": fit_start - setup_start,
            "epoch": stats.epoch,
            "train_tokens": progress.train_tokens,
            "flops": progress.flops,
            "macs": progress.macs,
            "train_loss": stats.train_loss,
            "valid_loss": stats.valid_loss,
            "valid_score": stats.valid_score,
            **{f"valid_{k}": float(v) for k, v in {**stats.valid, **stats.valid_sampled}.items()},
            "test_loss": test_loss,
            **{f"test_{k}": float(v) for k, v in test.items()},
            "wall_time_s": progress.wall_time_s,
            "best_epoch": progress.best_epoch,
        }
        _report(row, trainer, progress, stats.epoch, checkpoint=stats.is_best)
        if fail_after_report:
            raise InjectedFailure(f"trial {spec['name']} is listed in fail_trials: once (test hook)")

    run(
        recbole_config,
        saved=False,
        evaluate_test=False,
        data_fraction=spec["data_fraction"],
        measure_flops=True,
        resume=resume,
        on_epoch=on_epoch,
    )
