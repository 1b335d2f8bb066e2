"""Reusable analysis: FLOP counting (:mod:`.flops`), scaling-law fitting (:mod:`.scaling_law`).

Used by the sweep trial, ``benchmarks/sweep.py`` and ``benchmarks/scaling.py``.
"""

from __future__ import annotations

import math

# The sweep's results table: one row per (trial, epoch), written by benchmarks/sweep.py and fitted by
# benchmarks/scaling.py (test metrics only on each trial's best epoch).
EPOCH_COLUMNS = (
    "trial_id", "model", "n_layers", "hidden_size", "data_fraction", "seed", "epoch",
    "params_trainable", "params_non_embedding", "params_catalog", "train_tokens", "flops",
    "train_loss", "valid_loss", "valid_ndcg@10", "valid_recall@10", "test_ndcg@10", "test_recall@10",
    "wall_time_s", "is_best_epoch", "status",
)  # fmt: skip


def json_ready(value):
    """``value`` with numpy scalars as Python numbers and NaN/inf as ``None`` (standard JSON), recursively."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        return json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
