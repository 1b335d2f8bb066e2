"""Pre-train -> fine-tune: continue an SRT checkpoint from dataset A on dataset B's catalog.

SRT has no per-item parameters, so a checkpoint trained on A loads into a model built on B's items
(B's own text, encoded with A's ``text_encoder``). Steps of :func:`finetune`:

1. :func:`transfer_config`: B's RecBole ``Config``, with A's architecture (``ARCHITECTURE_KEYS``,
   which must not change) and A's training objective (``INHERITED_KEYS``, overridable);
2. :func:`load_pretrained`: SRT on B's features + A's weights; a different encoder or feature
   dimension is a :class:`TransferError`;
3. zero-shot: RecBole's evaluator (full ranking) on B's valid and test sets, before any update;
4. :func:`plan_stages` + :func:`train_stages`: the ``finetune_strategy`` as stages, each a fresh
   RecBole ``Trainer`` over the stage's trainable parameters with the stage's learning rate.

Strategies (``properties/transfer.yaml``), ``n`` = ``n_layers``, ``E`` = ``epochs``:

=====================  ===================================================================
``full``               everything trains, E epochs
``freeze_projection``  the item tower (projection) is frozen, the rest trains, E epochs
``top_k_layers``       only the top ``finetune_top_k`` blocks (+ final norm) train, E epochs
``progressive``        top 1 block, top 2, ..., top n (``progressive_epochs`` each, item tower
                       and positions frozen), then everything for the remaining epochs
=====================  ===================================================================
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
import yaml
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_local_time, get_trainer, init_seed

from recbole_srt.features import ItemFeatureError
from recbole_srt.model.srt import SRT
from recbole_srt.serve import CheckpointError, load_srt_checkpoint

logger = logging.getLogger(__name__)

STRATEGIES = ("full", "freeze_projection", "top_k_layers", "progressive")
# Define the weights' shapes and meaning: taken from the checkpoint, an override that differs is an error.
ARCHITECTURE_KEYS = (
    "n_layers",
    "n_heads",
    "hidden_size",
    "inner_size",
    "hidden_act",
    "layer_norm_eps",
    "norm_first",
    "projection",
    "projection_inner_size",
    "text_encoder",
    "MAX_ITEM_LIST_LENGTH",
)
# The pre-training objective and regularisation: taken from the checkpoint unless overridden.
INHERITED_KEYS = (
    "loss_type",
    "neg_sample_num",
    "train_all_positions",
    "hidden_dropout_prob",
    "attn_dropout_prob",
    "projection_dropout",
)
TRANSFER_YAML = Path(str(files("recbole_srt.properties") / "transfer.yaml"))


class TransferError(ValueError):
    """A checkpoint that cannot be fine-tuned on the target dataset as configured."""


@dataclass(frozen=True)
class Stage:
    """Train the parameters whose names start with one of ``prefixes`` for ``epochs`` at ``learning_rate``."""

    name: str
    prefixes: tuple[str, ...]
    epochs: int
    learning_rate: float


@dataclass
class RunResult:
    """One training run: valid metric after each epoch, best valid metrics, test metrics of that epoch."""

    curve: list[float]
    best_valid: dict
    test: dict
    checkpoint: str
    seconds: float


@dataclass
class TransferResult:
    """Zero-shot metrics of the pre-trained weights on the target, then the fine-tuned run and its stages."""

    zero_shot_valid: dict
    zero_shot_test: dict
    finetuned: RunResult
    stages: list[Stage]


def transfer_config(
    source: Config,
    dataset: str,
    config_file_list: Sequence[str] | None = None,
    config_dict: dict | None = None,
) -> Config:
    """Target ``dataset``'s SRT ``Config``: A's architecture and objective, B's data, the user's budget.

    Precedence, lowest first: SRT.yaml, ``properties/transfer.yaml``, ``config_file_list`` (B's
    dataset YAML), A's ``INHERITED_KEYS``, ``config_dict``, ``--key=value``; A's
    ``ARCHITECTURE_KEYS`` are then required to hold.
    """
    architecture = {key: source[key] for key in ARCHITECTURE_KEYS}
    inherited = {key: source[key] for key in INHERITED_KEYS}
    config = Config(
        model="SRT",
        dataset=dataset,
        config_file_list=[str(TRANSFER_YAML), *(config_file_list or [])],
        config_dict={**inherited, **architecture, **(config_dict or {})},
    )
    changed = {key: (value, config[key]) for key, value in architecture.items() if config[key] != value}
    if "text_encoder" in changed:
        was, now = changed["text_encoder"]
        raise TransferError(
            f"the checkpoint was trained on features of text_encoder {was!r}; fine-tuning with {now!r} "
            "would feed it features it has never seen. Use the same encoder."
        )
    if changed:
        details = ", ".join(
            f"{key}: checkpoint {was!r}, requested {now!r}" for key, (was, now) in changed.items()
        )
        raise TransferError(
            f"the architecture is fixed by the checkpoint; remove these overrides ({details})"
        )
    return config


def load_pretrained(config: Config, dataset, state_dict: dict) -> SRT:
    """SRT over ``dataset``'s item features with the pre-trained ``state_dict`` (any catalog size)."""
    model = SRT(config, dataset).to(config["device"])
    expected = state_dict["item_tower.feature_mean"].shape[0]
    actual = model.item_features.shape[1]
    if actual != expected:
        raise TransferError(
            f"the checkpoint's item tower takes {expected}-dim features, but {config['dataset']}'s item "
            f"features are {actual}-dim (a different text_encoder or item_feature_file?)"
        )
    model.load_state_dict(state_dict)
    return model


def _learning_rates(config: Config, strategy: str, n_stages: int) -> list[float]:
    rate = config["finetune_learning_rate"]
    if isinstance(rate, dict):
        rate = rate.get(strategy)
    if rate is None:
        rate = config["learning_rate"]
    rates = list(rate) if isinstance(rate, list | tuple) else [rate] * n_stages
    if len(rates) != n_stages:
        raise TransferError(f"finetune_learning_rate for {strategy}: {n_stages} rates needed, got {rates}")
    return [float(r) for r in rates]


def plan_stages(model: SRT, config: Config) -> list[Stage]:
    """The stages of ``config['finetune_strategy']`` within the budget ``config['epochs']``."""
    strategy, epochs, n = config["finetune_strategy"], config["epochs"], len(model.blocks)

    def top(k: int) -> tuple[str, ...]:
        return (*(f"blocks.{i}." for i in range(n - k, n)), "final_norm.")

    if strategy == "full":
        plan = [("all", ("",), epochs)]
    elif strategy == "freeze_projection":
        rest = tuple(f"{name}." for name, _ in model.named_children() if name != "item_tower")
        plan = [("all but the item tower", rest, epochs)]
    elif strategy == "top_k_layers":
        k = config["finetune_top_k"]
        if not 1 <= k <= n:
            raise TransferError(f"finetune_top_k must be in 1..n_layers={n}, got {k}")
        plan = [(f"top {k} of {n} blocks", top(k), epochs)]
    elif strategy == "progressive":
        per_stage = config["progressive_epochs"]
        last = epochs - n * per_stage
        if per_stage < 1 or last < 1:
            raise TransferError(
                f"progressive needs epochs > n_layers * progressive_epochs ({n} * {per_stage}), got {epochs}"
            )
        plan = [(f"top {i} of {n} blocks", top(i), per_stage) for i in range(1, n + 1)] + [
            ("all", ("",), last)
        ]
    else:
        raise TransferError(f"finetune_strategy must be one of {STRATEGIES}, got {strategy!r}")
    rates = _learning_rates(config, strategy, len(plan))
    return [Stage(name, prefixes, e, lr) for (name, prefixes, e), lr in zip(plan, rates, strict=True)]


def set_trainable(model: torch.nn.Module, prefixes: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Train exactly the parameters whose names start with one of ``prefixes``; returns them."""
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
        if param.requires_grad:
            trainable.append(param)
    return trainable


def train_stages(
    config: Config, model, train_data, valid_data, test_data, stages: Sequence[Stage]
) -> RunResult:
    """Train ``model`` stage after stage with RecBole's Trainer; test the best-on-valid weights.

    Each stage is a fresh Trainer (fresh optimizer over the stage's trainable parameters, the
    stage's learning rate; ``config['epochs']``/``['learning_rate']`` are set to the stage's) that
    starts from the previous stage's weights and best valid score, so one checkpoint file holds the
    best epoch of the whole run. Works for any RecBole model (one stage with prefix ``""``).
    """
    start = time.perf_counter()
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    name = f"{config['model']}-{config['dataset']}-{get_local_time()}-{uuid.uuid4().hex[:6]}.pth"
    checkpoint = os.path.join(config["checkpoint_dir"], name)
    curve: list[float] = []
    best_score, best_valid = float("-inf"), None
    for number, stage in enumerate(stages, 1):
        config["epochs"], config["learning_rate"] = stage.epochs, stage.learning_rate
        params = set_trainable(model, stage.prefixes)
        logger.info(
            "%s on %s, stage %d/%d: %s, epochs %d, lr %g, %d trainable parameters",
            config["model"],
            config["dataset"],
            number,
            len(stages),
            stage.name,
            stage.epochs,
            stage.learning_rate,
            sum(p.numel() for p in params),
        )
        trainer = trainer_class(config, model)
        # RecBole builds its optimizer over model.parameters(); give it only what this stage trains.
        trainer.optimizer = trainer._build_optimizer(params=params)
        trainer.saved_model_file, trainer.best_valid_score = checkpoint, best_score

        def record(epoch: int, score: float) -> None:
            curve.append(score)
            logger.info("  epoch %d: valid %s %.4f", len(curve), config["valid_metric"], score)

        trainer.fit(train_data, valid_data, show_progress=config["show_progress"], callback_fn=record)
        if trainer.best_valid_result is not None:  # this stage improved on the best so far
            best_score, best_valid = trainer.best_valid_score, trainer.best_valid_result
    set_trainable(model, ("",))
    test = trainer.evaluate(test_data, load_best_model=True, model_file=checkpoint)
    return RunResult(curve, dict(best_valid), dict(test), checkpoint, time.perf_counter() - start)


def evaluate(config: Config, model, data) -> dict:
    """Metrics of ``model`` as it is on ``data`` (RecBole's evaluator; full ranking by default)."""
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return dict(trainer.evaluate(data, load_best_model=False))


def finetune(
    checkpoint: str | Path,
    dataset: str,
    config_file_list: Sequence[str] | None = None,
    config_dict: dict | None = None,
) -> TransferResult:
    """Zero-shot evaluate, then fine-tune an SRT ``checkpoint`` on ``dataset``; see the module doc."""
    pretrained = load_srt_checkpoint(checkpoint)
    config = transfer_config(pretrained["config"], dataset, config_file_list, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = load_pretrained(config, train_data._dataset, pretrained["state_dict"])
    zero_valid, zero_test = evaluate(config, model, valid_data), evaluate(config, model, test_data)
    logger.info("zero-shot on %s: test %s", dataset, zero_test)
    stages = plan_stages(model, config)
    run = train_stages(config, model, train_data, valid_data, test_data, stages)
    return TransferResult(zero_valid, zero_test, run, stages)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict]:
    """The CLI's own options, and every other ``--key=value`` as a config override (YAML-typed)."""
    parser = argparse.ArgumentParser(
        description="Fine-tune a pre-trained SRT checkpoint on another dataset (zero-shot first).",
        epilog="Any other --key=value is a config override, e.g. --finetune_strategy=progressive.",
    )
    parser.add_argument("--checkpoint", required=True, help="SRT checkpoint (.pth) written by RecBole")
    parser.add_argument("--dataset", "-d", required=True, help="target dataset name")
    parser.add_argument(
        "--config_files", default=None, help="space-separated YAML files (the dataset's YAML)"
    )
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for arg in rest:
        key, sep, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not sep:
            parser.error(f"unrecognised argument {arg!r}; config overrides are --key=value")
        overrides[key] = yaml.safe_load(value)
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    sys.argv = sys.argv[:1]  # the overrides go in as config_dict; RecBole's Config must not parse them again
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        result = finetune(
            args.checkpoint,
            args.dataset,
            args.config_files.split() if args.config_files else None,
            overrides,
        )
    except (CheckpointError, TransferError, ItemFeatureError) as error:
        print(f"srt-finetune: error: {error}", file=sys.stderr)
        return 2
    run = result.finetuned
    print(f"zero-shot test: {result.zero_shot_test}")
    print(f"fine-tuned best valid: {run.best_valid}")
    print(f"fine-tuned test: {run.test}")
    print(f"checkpoint: {run.checkpoint} ({run.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
