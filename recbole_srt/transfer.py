"""Pre-train -> fine-tune: continue an SRT checkpoint from dataset A on dataset B's catalog.

SRT has no per-item parameters, so a checkpoint trained on A loads into a model built on B's items
(B's own text, encoded with A's ``text_encoder``). Steps of :func:`finetune`:

1. :func:`transfer_config`: B's RecBole ``Config``, with A's architecture (``ARCHITECTURE_KEYS``,
   which must not change) and A's training objective (``INHERITED_KEYS``, overridable);
2. :func:`load_pretrained`: SRT on B's features + A's weights; a different encoder or feature
   dimension is a :class:`TransferError`;
3. zero-shot: RecBole's evaluator (full ranking) on B's valid and test sets, before any update;
4. :func:`plan_stages`: the ``finetune_strategy`` as stages, which :func:`recbole_srt.pipeline.run`
   trains one after the other, each with a fresh trainer over the stage's parameters and rate.

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
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from recbole.config import Config

from recbole_srt.catalog import ItemFeatureError
from recbole_srt.checkpoint import feature_size, load_srt_checkpoint
from recbole_srt.cli import quiet_library_warnings, user_errors
from recbole_srt.encoder import encoder_for_checkpoint
from recbole_srt.features import check_feature_size
from recbole_srt.model.srt import SRT
from recbole_srt.overrides import known_config_keys, parse_overrides
from recbole_srt.pipeline import Run, Stage, make_config, run
from recbole_srt.registration import TRANSFER_YAML

logger = logging.getLogger(__name__)

STRATEGIES = ("full", "freeze_projection", "top_k_layers", "progressive")
# Define the weights' shapes and meaning: taken from the checkpoint, an override that differs is an error.
ARCHITECTURE_KEYS = ("n_layers", "n_heads", "hidden_size", "inner_size", "hidden_act", "layer_norm_eps",
                     "norm_first", "projection", "projection_inner_size", "similarity", "text_encoder",
                     "MAX_ITEM_LIST_LENGTH")  # fmt: skip
# The pre-training objective and regularisation: taken from the checkpoint unless overridden.
INHERITED_KEYS = ("loss_type", "neg_sample_num", "negatives", "negatives_from_training_items", "temperature",
                  "train_all_positions", "train_rows", "hidden_dropout_prob", "attn_dropout_prob",
                  "projection_dropout", "text_max_tokens", "text_encoder_backend",
                  "text_encoder_precision", "item_id_embedding")  # fmt: skip


class TransferError(ValueError):
    """A checkpoint that cannot be fine-tuned on the target dataset as configured."""


def transfer_config(
    source: Config,
    dataset: str,
    config_file_list: Sequence[str] | None = None,
    config_dict: dict | None = None,
) -> Config:
    """Target ``dataset``'s SRT ``Config``: A's architecture and objective, B's data, the user's budget.

    Precedence, lowest first: SRT.yaml, ``properties/transfer.yaml``, ``config_file_list`` (B's
    dataset YAML), A's ``INHERITED_KEYS``, ``config_dict``; A's
    ``ARCHITECTURE_KEYS`` are then required to hold.
    """
    architecture = {key: source[key] for key in ARCHITECTURE_KEYS}
    try:  # the checkpoint's encoder, or the user's own name (a folder) for it
        architecture["text_encoder"] = encoder_for_checkpoint(
            source["text_encoder"], (config_dict or {}).get("text_encoder")
        )
    except ItemFeatureError as error:
        raise TransferError(str(error)) from None
    inherited = {key: source[key] for key in INHERITED_KEYS}
    config = make_config(
        "SRT",
        dataset,
        [str(TRANSFER_YAML), *(config_file_list or [])],
        {**inherited, **architecture, **(config_dict or {})},
    )
    changed = {key: (value, config[key]) for key, value in architecture.items() if config[key] != value}
    if changed:
        details = ", ".join(
            f"{key}: checkpoint {was!r}, requested {now!r}" for key, (was, now) in changed.items()
        )
        raise TransferError(
            f"the architecture is fixed by the checkpoint; remove these overrides ({details})"
        )
    return config


def load_pretrained(state_dict: dict, config: Config, dataset) -> SRT:
    """SRT over ``dataset``'s item features with the pre-trained ``state_dict`` (any catalog size); with
    ``item_id_embedding``, the target's items get a new ID table, trained in every stage."""
    model = SRT(config, dataset)
    check_feature_size(feature_size(state_dict), model.item_features, f"{config['dataset']}'s item features")
    model.load_transferred(state_dict)
    return model


def _learning_rates(config: Config, strategy: str, n_stages: int) -> list[float]:
    rate = config["finetune_learning_rate"]
    if isinstance(rate, dict):
        rate = rate.get(strategy)
    if rate is None:
        rate = config["learning_rate"]
    rates = list(rate) if isinstance(rate, list | tuple) else [rate] * n_stages
    numbers = all(isinstance(r, int | float) and not isinstance(r, bool) for r in rates)
    if len(rates) != n_stages or not numbers:
        raise TransferError(
            f"finetune_learning_rate for {strategy} must be a number or a list of {n_stages} rates "
            f"(one per stage), got {rate!r}"
        )
    return [float(r) for r in rates]


def plan_stages(config: Config) -> list[Stage]:
    """The stages of ``config['finetune_strategy']`` within the budget ``config['epochs']``."""
    strategy, epochs, n = config["finetune_strategy"], config["epochs"], config["n_layers"]

    def top(k: int) -> tuple[str, ...]:
        return (*(f"blocks.{i}." for i in range(n - k, n)), "final_norm.")

    if strategy == "full":
        plan = [("all", ("",), epochs)]
    elif strategy == "freeze_projection":
        plan = [("all but the item tower", SRT.SEQUENCE_MODULES, epochs)]
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
    if config["item_id_embedding"] != "none":  # the target's ID table is new: it trains in every stage
        plan = [(name, (*prefixes, "item_id_embedding."), e) for name, prefixes, e in plan]
    rates = _learning_rates(config, strategy, len(plan))
    return [Stage(name, prefixes, e, lr) for (name, prefixes, e), lr in zip(plan, rates, strict=True)]


def finetune(
    checkpoint: str | Path,
    dataset: str,
    config_file_list: Sequence[str] | None = None,
    config_dict: dict | None = None,
) -> Run:
    """Zero-shot evaluate, then fine-tune an SRT ``checkpoint`` on ``dataset``; see the module doc.

    The record holds the zero-shot metrics (``zero_shot_valid``/``zero_shot_test``), the stages and
    the fine-tuned run (best valid, test of the best-on-valid weights).
    """
    pretrained = load_srt_checkpoint(
        checkpoint, settings={"text_encoder": (config_dict or {}).get("text_encoder")}
    )
    config = transfer_config(pretrained["config"], dataset, config_file_list, config_dict)
    plan_stages(config)  # a bad strategy fails here, before any data is loaded or encoded
    return run(
        config,
        build_model=partial(load_pretrained, pretrained["state_dict"]),
        plan=plan_stages,
        zero_shot=True,
    )


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """The CLI's own options, and the ``--key=value`` settings (parsed by :mod:`recbole_srt.overrides`)."""
    parser = argparse.ArgumentParser(
        prog="srt-finetune",
        description="Fine-tune a pre-trained SRT checkpoint on another dataset (zero-shot first).",
        epilog="Any other --key=value is a setting, e.g. --finetune_strategy=progressive.",
    )
    parser.add_argument("--checkpoint", required=True, help="SRT checkpoint (.pth) written by RecBole")
    parser.add_argument("--dataset", "-d", required=True, help="target dataset name")
    parser.add_argument(
        "--config_files", default=None, help="space-separated YAML files (the dataset's YAML)"
    )
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    config_files = args.config_files.split() if args.config_files else None
    quiet_library_warnings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with user_errors("srt-finetune") as failed:
        overrides = parse_overrides(rest, known_config_keys(config_files or ()))
        result = finetune(args.checkpoint, args.dataset, config_files, overrides)
    if failed:
        return failed.status
    record = result.record
    print(f"zero-shot test: {record.zero_shot_test}")
    print(f"fine-tuned best valid: {record.best_valid}")
    print(f"fine-tuned test: {record.test}")
    print(f"checkpoint: {record.checkpoint} ({record.wall_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
