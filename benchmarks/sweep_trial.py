"""One sweep trial: a real RecBole training run inside a Ray Tune worker (:func:`run_trial`).

Per trial (one model size, one data fraction, one seed):

1. RecBole builds the dataset and the standard train/valid/test split from the trial's settings
   (``config_dict`` only: the worker's ``sys.argv`` belongs to Ray, not to RecBole's ``Config``);
2. :func:`subsample_users` keeps the training sequences of a seeded random ``data_fraction`` of the
   users; validation and test stay whole, so every fraction is scored on the same data;
3. the model is built on the subsampled training set; its parameters are counted and the FLOPs of
   one training epoch are measured on real batches (:func:`epoch_flops`);
4. :class:`SweepTrainer` (RecBole's ``Trainer``) trains it. After every epoch the callback
   reports one row to Ray Tune (train loss, valid metrics and loss, cumulative tokens, FLOPs and
   wall time), so a scheduler such as ASHA can stop the trial early. When the epoch is the best so
   far (RecBole's ``valid_metric``), the test split is scored with the same weights and the model is
   checkpointed (RecBole's checkpoint format, ``model.pth``, loadable with ``load_data_and_model``);
   Ray keeps that one checkpoint per trial, and a restarted trial resumes from it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from ray.air import session
from ray.air.checkpoint import Checkpoint
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.utils import get_dataloader
from recbole.trainer import Trainer
from recbole.utils import get_model, init_logger, init_seed

import recbole_srt  # noqa: F401  (registers SRT with RecBole in this worker process)
from benchmarks.flops import count_params, training_step_flops, training_targets

CHECKPOINT_FILE = "model.pth"
PROGRESS_FILE = "progress.json"


class InjectedFailure(RuntimeError):
    """Raised by trials listed in a preset's ``fail_trials`` (a test hook for retries and resume).

    ``always``: at the start of every attempt (the trial ends as ERROR); ``once``: right after the
    first epoch is reported and checkpointed, unless resumed from a checkpoint (the retry resumes).
    """


class SweepTrainer(Trainer):
    """RecBole's ``Trainer`` that also measures what a sweep row needs.

    Per training epoch: the number of next-item targets trained on and the target-weighted mean
    training loss. Per evaluation (full-catalog ranking): the result dict and the mean cross-entropy
    of each sequence's true next item under a softmax over the whole catalog (``eval_loss``; NaN
    for sampled evaluation). RecBole's training and early stopping are unchanged.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.epoch_targets = 0
        self.epoch_loss = math.nan
        self.eval_loss = math.nan
        self.last_valid_result: dict = {}
        self.last_valid_loss = math.nan
        self._eval_loss_sum = torch.zeros(())
        self._eval_count = 0

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        loss_sum = torch.zeros((), device=self.device)
        targets = torch.zeros((), dtype=torch.long, device=self.device)

        def counted_loss(interaction):
            nonlocal loss_sum, targets
            loss = self.model.calculate_loss(interaction)
            n = training_targets(self.model, interaction).to(self.device)
            loss_sum = loss_sum + loss.detach().float() * n
            targets = targets + n
            return loss

        total = super()._train_epoch(
            train_data, epoch_idx, loss_func=counted_loss, show_progress=show_progress
        )
        self.epoch_targets = int(targets)
        self.epoch_loss = float(loss_sum / targets.clamp(min=1))
        return total

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        self._eval_loss_sum, self._eval_count = torch.zeros((), device=self.device), 0
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        self.eval_loss = float(self._eval_loss_sum / self._eval_count) if self._eval_count else math.nan
        return result

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        log_probs = torch.log_softmax(scores.float(), dim=1)
        self._eval_loss_sum = self._eval_loss_sum - log_probs[positive_u, positive_i.to(scores.device)].sum()
        self._eval_count += len(positive_u)
        return interaction, scores, positive_u, positive_i

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress)
        self.last_valid_result, self.last_valid_loss = dict(valid_result), self.eval_loss
        return valid_score, valid_result


@dataclass
class Progress:
    """Cumulative counters of a trial, carried in its checkpoint across restarts."""

    train_tokens: int = 0
    flops: int = 0
    wall_time_s: float = 0.0
    best_epoch: int = -1


def subsample_users(config, train_data, fraction: float, seed: int):
    """Training dataloader restricted to a seeded random ``fraction`` of the training users.

    The users of the training split are put in a random order drawn from ``seed``; a fraction keeps
    the first ``round(fraction * n_users)`` of them (at least one) with all their training sequences,
    so for one seed smaller fractions are subsets of larger ones. Validation and test are untouched.
    Returns the dataloader and the number of users kept.
    """
    dataset = train_data._dataset
    user_ids = dataset.inter_feat[dataset.uid_field].numpy()
    users = np.unique(user_ids)
    if fraction >= 1:
        return train_data, len(users)
    if fraction <= 0:
        raise ValueError(f"data_fraction must be in (0, 1], got {fraction}")
    kept = np.random.default_rng(seed).permutation(users)[: max(1, round(fraction * len(users)))]
    rows = torch.from_numpy(np.flatnonzero(np.isin(user_ids, kept)))
    subset = dataset.copy(dataset.inter_feat[rows])
    loader = get_dataloader(config, "train")(config, subset, train_data._sampler, shuffle=config["shuffle"])
    return loader, len(kept)


def epoch_flops(model, train_data, enable_amp: bool, seed: int) -> int:
    """Training FLOPs of one epoch, measured on real batches.

    An epoch is ``n_full`` full batches plus one partial batch of the remaining sequences; each
    kind is measured once (:func:`benchmarks.flops.training_step_flops`) on sequences drawn at
    random from the training set, through the dataloader's own collation (BERT4Rec's masking
    included). Batch-to-batch differences (SRT's distinct items, BERT4Rec's masked count) are not
    averaged out.
    """
    n_rows, batch_size = len(train_data._dataset), train_data.step
    n_full, rest = divmod(n_rows, batch_size)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device

    def measure(size: int) -> int:
        batch = train_data.collate_fn(rng.choice(n_rows, size, replace=False).tolist())
        return training_step_flops(model, batch.to(device), enable_amp)

    return (n_full * measure(batch_size) if n_full else 0) + (measure(rest) if rest else 0)


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


def _report(row: dict, trainer: SweepTrainer | None, progress: Progress, epoch: int) -> None:
    """Send one row to Ray Tune, with a checkpoint (model + progress) when ``trainer`` is given."""
    if trainer is None:
        session.report(row)
        return
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as folder:
        trainer._save_checkpoint(epoch, verbose=False, saved_model_file=os.path.join(folder, CHECKPOINT_FILE))
        Path(folder, PROGRESS_FILE).write_text(json.dumps(asdict(progress)))
        session.report(row, checkpoint=Checkpoint.from_directory(folder))


def run_trial(config: dict) -> None:
    """Ray Tune function trainable: train ``config["trial"]`` (a grid point from ``benchmarks.sweep``)."""
    spec = config["trial"]
    sys.argv = sys.argv[:1]  # RecBole's Config parses --key=value from sys.argv; the worker's are Ray's
    torch.set_num_threads(max(1, int(spec["cpu"])))
    if spec["fail"] == "always":
        raise InjectedFailure(f"trial {spec['name']} is listed in fail_trials: always (test hook)")
    setup_start = time.perf_counter()

    recbole_config = Config(
        model=spec["model"],
        dataset=spec["dataset"],
        config_file_list=spec["config_files"] or None,
        config_dict=recbole_settings(spec),
    )
    init_seed(recbole_config["seed"], recbole_config["reproducibility"])
    init_logger(recbole_config)
    dataset = create_dataset(recbole_config)
    train_data, valid_data, test_data = data_preparation(recbole_config, dataset)
    train_data, train_users = subsample_users(recbole_config, train_data, spec["data_fraction"], spec["seed"])

    init_seed(recbole_config["seed"], recbole_config["reproducibility"])
    model = get_model(spec["model"])(recbole_config, train_data._dataset).to(recbole_config["device"])
    params = count_params(model, spec["model"])
    flops_per_epoch = epoch_flops(model, train_data, bool(recbole_config["enable_amp"]), spec["seed"])
    trainer = SweepTrainer(recbole_config, model)

    progress = Progress()
    checkpoint = session.get_checkpoint()
    fail_after_report = spec["fail"] == "once" and checkpoint is None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.resume_checkpoint(os.path.join(folder, CHECKPOINT_FILE))
            progress = Progress(**json.loads(Path(folder, PROGRESS_FILE).read_text()))

    static = {
        "params_trainable": params.trainable,
        "params_non_embedding": params.non_embedding,
        "params_catalog": params.catalog,
        "n_items": dataset.item_num,
        "max_epochs": recbole_config["epochs"],
        "train_users": train_users,
        "train_sequences": len(train_data._dataset),
        "flops_per_epoch": flops_per_epoch,
        "device": str(recbole_config["device"]),
        "setup_time_s": time.perf_counter() - setup_start,
    }
    wall_offset, fit_start = progress.wall_time_s, time.perf_counter()

    def on_epoch(epoch_idx: int, valid_score: float) -> None:
        progress.train_tokens += trainer.epoch_targets
        progress.flops += flops_per_epoch
        valid = trainer.last_valid_result
        is_best = trainer.cur_step == 0  # RecBole's early stopping resets it on a new best
        test = dict.fromkeys(valid, math.nan)
        test_loss = math.nan
        if is_best:
            progress.best_epoch = epoch_idx
            test = trainer.evaluate(test_data, load_best_model=False)
            test_loss = trainer.eval_loss
        progress.wall_time_s = wall_offset + time.perf_counter() - fit_start
        row = {
            **static,
            "epoch": epoch_idx,
            "train_tokens": progress.train_tokens,
            "flops": progress.flops,
            "train_loss": trainer.epoch_loss,
            "valid_loss": trainer.last_valid_loss,
            "valid_score": valid_score,
            **{f"valid_{k}": float(v) for k, v in valid.items()},
            "test_loss": test_loss,
            **{f"test_{k}": float(v) for k, v in test.items()},
            "wall_time_s": progress.wall_time_s,
            "best_epoch": progress.best_epoch,
        }
        _report(row, trainer if is_best else None, progress, epoch_idx)
        if fail_after_report:
            raise InjectedFailure(f"trial {spec['name']} is listed in fail_trials: once (test hook)")

    trainer.fit(train_data, valid_data, verbose=False, saved=False, callback_fn=on_epoch)
