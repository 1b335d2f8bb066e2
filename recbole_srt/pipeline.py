"""The one RecBole pipeline: config -> seed -> dataset -> model -> trainer -> fit -> evaluate.

Every entry point runs through :func:`run`: ``run_recbole``, ``srt-finetune``
(:func:`recbole_srt.transfer.finetune`), ``benchmarks/compare.py``, the sweep trial and the
transfer benchmark. ::

    from recbole_srt import run
    result = run("SRT", "ml-100k", config_dict={"epochs": 2})
    result.record.test["ndcg@10"], result.record.s_per_epoch, result.record.params.trainable

:func:`make_config` builds RecBole's ``Config`` without reading ``sys.argv`` (unless ``argv`` is
given: then its ``--key=value`` are parsed by :mod:`recbole_srt.overrides`, typos refused).
:func:`run` returns a :class:`Run`: the :class:`RunRecord` (JSON-ready) and the live objects
(config, data loaders, model, trainer) for callers that measure more.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging import getLogger

import numpy as np
import torch
from recbole.config import Config
from recbole.data import data_preparation
from recbole.data.utils import get_dataloader
from recbole.utils import get_local_time, get_model, get_trainer, init_logger, init_seed

from recbole_srt import checks, compat
from recbole_srt.model.params import ParamCounts, count_params
from recbole_srt.overrides import known_config_keys, parse_overrides
from recbole_srt.trainer import EpochStats, recording

logger = getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """Train the parameters whose names start with one of ``prefixes`` for ``epochs`` at ``learning_rate``."""

    name: str
    prefixes: tuple[str, ...]
    epochs: int
    learning_rate: float


@dataclass
class RunRecord:
    """What one run measured. ``epochs``: one :class:`EpochStats` per trained epoch, over all stages."""

    model: str
    dataset: str
    seed: int
    device: str
    params: ParamCounts
    n_items: int
    train_sequences: int
    epochs: list[EpochStats] = field(default_factory=list)
    best_valid: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    test_sampled: dict = field(default_factory=dict)
    zero_shot_valid: dict | None = None
    zero_shot_test: dict | None = None
    stages: list[Stage] = field(default_factory=list)
    flops_per_epoch: int | None = None
    macs_per_epoch: int | None = None
    checkpoint: str | None = None
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float | None = None

    @property
    def valid_curve(self) -> list[float]:
        return [e.valid_score for e in self.epochs]

    @property
    def best_epoch(self) -> int | None:
        """1-based number of the epoch whose weights were kept (the last of equal best scores)."""
        best = [i for i, e in enumerate(self.epochs, 1) if e.is_best]
        return best[-1] if best else None

    @property
    def s_per_epoch(self) -> float:
        return float(np.mean([e.train_seconds for e in self.epochs])) if self.epochs else float("nan")

    @property
    def targets_per_s(self) -> float:
        seconds = sum(e.train_seconds for e in self.epochs)
        return sum(e.train_targets for e in self.epochs) / seconds if seconds else float("nan")

    def to_dict(self) -> dict:
        """A flat JSON-ready row: metrics prefixed ``valid_`` (best epoch), ``test_``, ``zero_shot_*_``;
        the paper's sampled metrics are ``valid_sampled_ndcg@5`` etc."""
        row = {
            "model": self.model,
            "dataset": self.dataset,
            "seed": self.seed,
            "device": self.device,
            **{f"params_{k}": v for k, v in dataclasses.asdict(self.params).items()},
            "params_paper": self.params.paper,
            "n_items": self.n_items,
            "train_sequences": self.train_sequences,
            "epochs_run": len(self.epochs),
            "best_epoch": self.best_epoch,
            "valid_curve": [round(v, 5) for v in self.valid_curve],
            "epoch_seconds": [
                round(e.train_seconds + np.nan_to_num(e.valid_seconds), 3) for e in self.epochs
            ],
            "s_per_epoch": self.s_per_epoch,
            "train_targets_per_s": self.targets_per_s,
            "flops_per_epoch": self.flops_per_epoch,
            "macs_per_epoch": self.macs_per_epoch,
            "checkpoint": self.checkpoint,
            "wall_s": self.wall_s,
            "peak_rss_mb": self.peak_rss_mb,
            "peak_gpu_mb": self.peak_gpu_mb,
        }
        best_sampled = self.epochs[self.best_epoch - 1].valid_sampled if self.best_epoch else {}
        for prefix, metrics in (
            ("valid", self.best_valid),
            ("test", self.test),
            ("test", self.test_sampled),
            ("valid", best_sampled),
            ("zero_shot_valid", self.zero_shot_valid),
            ("zero_shot_test", self.zero_shot_test),
        ):
            row.update({f"{prefix}_{k}": float(v) for k, v in (metrics or {}).items()})
        return row


@dataclass
class Run:
    """A finished run: its record and the live objects it used."""

    record: RunRecord
    config: Config
    model: torch.nn.Module
    trainer: object
    train_data: object
    valid_data: object
    test_data: object


def make_config(
    model: str,
    dataset: str,
    config_file_list: Sequence[str] | None = None,
    config_dict: dict | None = None,
    argv: Sequence[str] | None = None,
) -> Config:
    """RecBole's ``Config``; ``argv`` (``--key=value`` strings) outranks ``config_dict``; never sys.argv.

    The model name, the settings' types and the model's own check (:mod:`recbole_srt.checks`) are
    verified here, before any data is loaded.
    """
    overrides = parse_overrides(argv, known_config_keys(config_file_list or ())) if argv else {}
    checks.check_model_name(model)
    checks.check_config_files(config_file_list or ())
    with compat.ignoring_argv(), checks.config_errors():
        config = Config(
            model=model,
            dataset=dataset,
            config_file_list=list(config_file_list) if config_file_list else None,
            config_dict={**(config_dict or {}), **overrides},
        )
    checks.check_config_before_data(config)
    return config


def subsample_users(config: Config, train_data, fraction: float, seed: int):
    """The training loader restricted to a seeded random ``fraction`` of the training users.

    Users are put in a random order drawn from ``seed``; a fraction keeps the first
    ``round(fraction * n_users)`` (at least one) with all their training sequences, so for one seed
    smaller fractions are subsets of larger ones. Validation and test are untouched.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"data_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return train_data
    dataset = train_data._dataset
    user_ids = dataset.inter_feat[dataset.uid_field].numpy()
    users = np.unique(user_ids)
    kept = np.random.default_rng(seed).permutation(users)[: max(1, round(fraction * len(users)))]
    subset = dataset.copy(dataset.inter_feat[torch.from_numpy(np.flatnonzero(np.isin(user_ids, kept)))])
    return get_dataloader(config, "train")(config, subset, train_data._sampler, shuffle=config["shuffle"])


def set_trainable(model: torch.nn.Module, prefixes: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Train exactly the parameters whose names start with one of ``prefixes``; returns them."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
    return [param for param in model.parameters() if param.requires_grad]


def run(
    config: Config | str,
    dataset: str | None = None,
    config_file_list: Sequence[str] | None = None,
    config_dict: dict | None = None,
    *,
    saved: bool = True,
    evaluate_test: bool = True,
    data_fraction: float = 1.0,
    build_model: Callable[[Config, object], torch.nn.Module] | None = None,
    plan: Callable[[Config], list[Stage]] | None = None,
    zero_shot: bool = False,
    measure_flops: bool = False,
    resume: str | None = None,
    on_epoch: Callable[[Run, EpochStats], None] | None = None,
) -> Run:
    """Train and evaluate one model; see the module docstring.

    Args:
        config: a ``Config`` (from :func:`make_config`), or a model name followed by ``dataset``,
            ``config_file_list`` and ``config_dict`` as in RecBole's ``run_recbole``.
        saved: keep the best-on-valid checkpoint and test it (else test the last weights).
        evaluate_test: score the test split (``False`` for tuning: it is never touched).
        data_fraction: train on a seeded random fraction of the training users (scaling sweeps).
        build_model: ``(config, train_dataset) -> model`` instead of RecBole's ``get_model`` (fine-tuning).
        plan: ``config -> stages``; default one stage of every parameter, ``epochs`` long.
        zero_shot: evaluate valid and test before any training (fine-tuning).
        measure_flops: measure one epoch's training FLOPs (forward + backward) and forward MACs
            (the SRT paper's thop convention) on real batches.
        resume: a checkpoint of this run to continue (RecBole's ``resume_checkpoint``).
        on_epoch: called after each validation with the run so far and that epoch's stats.
    """
    start = time.perf_counter()
    if isinstance(config, str):
        config = make_config(config, dataset, config_file_list, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    data = checks.load_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, data)
    train_data = subsample_users(config, train_data, data_fraction, config["seed"])

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    build_model = build_model or (lambda cfg, ds: get_model(cfg["model"])(cfg, ds))
    model = build_model(config, train_data._dataset).to(config["device"])
    if config["device"].type == "cuda":
        torch.cuda.reset_peak_memory_stats(config["device"])
    trainer_class = recording(get_trainer(config["MODEL_TYPE"], config["model"]))
    record = RunRecord(
        model=config["model"],
        dataset=config["dataset"],
        seed=config["seed"],
        device=str(config["device"]),
        params=count_params(model),
        n_items=int(model.n_items) - 1,
        train_sequences=len(train_data._dataset),
    )
    if measure_flops:
        from recbole_srt.analysis.flops import epoch_costs

        costs = epoch_costs(model, train_data, bool(config["enable_amp"]), config["seed"])
        record.flops_per_epoch, record.macs_per_epoch = costs
    if zero_shot:
        probe = trainer_class(config, model)
        record.zero_shot_valid = dict(probe.evaluate(valid_data, load_best_model=False))
        if evaluate_test:
            record.zero_shot_test = dict(probe.evaluate(test_data, load_best_model=False))
        logger.info("zero-shot: valid %s", record.zero_shot_valid)

    stages = plan(config) if plan else [Stage("all", ("",), config["epochs"], config["learning_rate"])]
    record.stages = stages
    name = f"{config['model']}-{config['dataset']}-{get_local_time()}-{uuid.uuid4().hex[:6]}.pth"
    checkpoint = os.path.join(config["checkpoint_dir"], name)
    # RecBole's Trainer creates it with exists-then-makedirs: two DDP ranks starting together race
    os.makedirs(config["checkpoint_dir"], exist_ok=True)
    result = Run(record, config, model, None, train_data, valid_data, test_data)
    best_score, best_valid = None, None
    for number, stage in enumerate(stages, 1):
        # Each stage: a fresh trainer (fresh optimizer over the stage's parameters, its rate) that
        # starts from the previous stage's weights and best score, so one file holds the best epoch.
        config["epochs"], config["learning_rate"] = stage.epochs, stage.learning_rate
        params = set_trainable(model, stage.prefixes)
        trainer = trainer_class(config, model)
        if len(stages) > 1:
            trainer.optimizer = trainer._build_optimizer(params=params)
            logger.info("stage %d/%d: %s, %d epochs, lr %g", number, len(stages), stage.name, stage.epochs,
                        stage.learning_rate)  # fmt: skip
        trainer.saved_model_file = checkpoint
        if best_score is not None:
            trainer.best_valid_score = best_score
        if resume:
            trainer.resume_checkpoint(resume)
        result.trainer = trainer

        start_index = len(record.epochs)

        def sync(trainer=trainer, start=start_index, first=start_index + trainer.start_epoch) -> None:
            """Append the stage's new epochs to the record, numbered over the whole run (0-based)."""
            done = len(record.epochs) - start
            for i, stats in enumerate(trainer.history[done:], done):
                stats.epoch = first + i
                record.epochs.append(stats)

        def record_epoch(epoch_idx: int, valid_score: float, sync=sync) -> None:
            sync()
            if on_epoch:
                on_epoch(result, record.epochs[-1])

        trainer.fit(train_data, valid_data, saved=saved, show_progress=config["show_progress"],
                    callback_fn=record_epoch)  # fmt: skip
        sync()
        if trainer.best_valid_result is not None:  # this stage improved on the best so far
            best_score, best_valid = trainer.best_valid_score, trainer.best_valid_result
    set_trainable(model, ("",))
    record.best_valid = {key: float(value) for key, value in (best_valid or {}).items()}
    record.checkpoint = checkpoint if saved else None
    if evaluate_test:
        loaded = saved and os.path.isfile(checkpoint)
        test = trainer.evaluate(test_data, load_best_model=loaded, model_file=checkpoint)
        record.test = {key: float(value) for key, value in test.items()}
        record.test_sampled = trainer.eval_sampled
    record.wall_s = time.perf_counter() - start
    record.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if config["device"].type == "cuda":
        record.peak_gpu_mb = torch.cuda.max_memory_allocated(config["device"]) / 2**20
    logger.info("best valid: %s; test: %s", record.best_valid, record.test)
    return result
