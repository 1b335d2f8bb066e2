"""SRT's trainer: RecBole's ``Trainer`` that records what every run reports, epoch by epoch.

``recbole.utils.get_trainer(ModelType.SEQUENTIAL, "SRT")`` returns :class:`SRTTrainer` (see
:mod:`recbole_srt.registration`), so ``run_recbole --model=SRT`` trains with it. The recording
itself is the mixin :class:`EpochRecorder`; :func:`recording` puts it on any RecBole trainer, so
baselines trained by :func:`recbole_srt.pipeline.run` are measured the same way.

Per epoch (:class:`EpochStats`): training seconds, the number of next-item targets trained on
(so throughput), the target-weighted mean training loss, validation seconds, the validation result
and the mean full-catalog cross-entropy of the validation targets (``valid_loss``; NaN for
sampled evaluation). RecBole's training loop and early stopping are unchanged; checkpoints hold
RecBole's keys in SRT's weights-only format (:mod:`recbole_srt.checkpoint`), written atomically.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from recbole.trainer import Trainer

from recbole_srt.metrics import SAMPLED_KS, ranking_metrics, sampled_ranks
from recbole_srt.optim import build_optimizer


@dataclass
class EpochStats:
    """One training epoch and the validation after it."""

    epoch: int
    train_seconds: float
    train_targets: int
    train_loss: float
    valid_seconds: float = math.nan
    valid_score: float = math.nan
    valid_loss: float = math.nan
    valid: dict = field(default_factory=dict)
    valid_sampled: dict = field(default_factory=dict)
    is_best: bool = False

    @property
    def targets_per_s(self) -> float:
        return self.train_targets / self.train_seconds if self.train_seconds else math.nan


def training_targets(model: torch.nn.Module, interaction) -> torch.Tensor:
    """Number of next-item targets the training loss is computed on in ``interaction`` (0-dim tensor).

    SRT with ``train_all_positions``: every real position; BERT4Rec: the masked positions its loss
    counts (``MASK_INDEX > 0``); otherwise one target per sequence.
    """
    if getattr(model, "train_all_positions", False):
        return interaction[model.ITEM_SEQ_LEN].sum()
    if hasattr(model, "MASK_INDEX"):
        return (interaction[model.MASK_INDEX] > 0).sum()
    return torch.tensor(interaction[model.ITEM_SEQ].shape[0])


class EpochRecorder:
    """Mixin for a RecBole trainer: appends one :class:`EpochStats` to ``self.history`` per epoch.

    After each full-ranking :meth:`evaluate`: ``self.eval_loss``, the mean full-catalog cross-entropy
    of the targets, and ``self.eval_sampled``, the SRT paper's Recall@5/NDCG@5 against 10,000
    sampled negatives (:mod:`recbole_srt.metrics`), both from the score rows RecBole ranks.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.history: list[EpochStats] = []
        self.eval_loss, self.eval_sampled = math.nan, {}
        self._eval_loss_sum, self._eval_count, self._sampled_ranks = torch.zeros(()), 0, []

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        loss_func = loss_func or self.model.calculate_loss
        loss_sum = torch.zeros((), device=self.device)
        targets = torch.zeros((), dtype=torch.long, device=self.device)

        def counted_loss(interaction):
            nonlocal loss_sum, targets
            loss = loss_func(interaction)
            n = training_targets(self.model, interaction).to(self.device)
            loss_sum = loss_sum + loss.detach().float() * n
            targets = targets + n
            return loss

        start = time.perf_counter()
        total = super()._train_epoch(
            train_data, epoch_idx, loss_func=counted_loss, show_progress=show_progress
        )
        seconds, n = time.perf_counter() - start, int(targets)
        self.history.append(EpochStats(epoch_idx, seconds, n, float(loss_sum) / max(n, 1)))
        return total

    def _valid_epoch(self, valid_data, show_progress=False):
        start = time.perf_counter()
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        stats = self.history[-1]
        stats.valid_seconds = time.perf_counter() - start
        stats.valid_score, stats.valid, stats.valid_loss = float(score), dict(result), self.eval_loss
        stats.valid_sampled = self.eval_sampled
        # RecBole's early stopping (called next, against the best so far) takes ties as a new best.
        bigger = self.valid_metric_bigger
        stats.is_best = score >= self.best_valid_score if bigger else score <= self.best_valid_score
        return score, result

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        self._eval_loss_sum = torch.zeros((), device=self.device)
        self._eval_count, self._sampled_ranks = 0, []
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        self.eval_loss = float(self._eval_loss_sum / self._eval_count) if self._eval_count else math.nan
        ranks = torch.cat(self._sampled_ranks).cpu().numpy() if self._sampled_ranks else np.zeros(0)
        metrics = ranking_metrics(ranks, SAMPLED_KS, mrr_k=None)
        self.eval_sampled = {f"sampled_{k}": v for k, v in metrics.items()}
        return result

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        targets = positive_i.to(scores.device)
        log_probs = torch.log_softmax(scores.float(), dim=1)
        self._eval_loss_sum = self._eval_loss_sum - log_probs[positive_u, targets].sum()
        self._eval_count += len(positive_u)
        users = interaction[self.config["USER_ID_FIELD"]]
        users = users[positive_u.to(users.device)]
        self._sampled_ranks.append(sampled_ranks(scores[positive_u], targets, users))
        return interaction, scores, positive_u, positive_i


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def training_precision(config) -> str:
    """The precision :class:`SRTTrainer` trains ``config`` at; a ``ValueError`` for one it cannot."""
    precision = config["precision"]
    if precision == "fp32" and config["enable_amp"]:  # RecBole's switch: its default autocast dtype
        precision = "fp16" if config["device"].type == "cuda" else "bf16"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and config["device"].type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (GradScaler); use bf16 on CPU")
    return precision


class SRTTrainer(EpochRecorder, Trainer):
    """The trainer RecBole picks for SRT: RecBole's ``Trainer`` with :class:`EpochRecorder`, plus

    * the optimiser and per-batch schedule of :mod:`recbole_srt.optim` (saved in every checkpoint);
    * ``precision``: ``bf16`` autocasts the loss (CPU or GPU); ``fp16`` autocasts with a GradScaler
      (CUDA only); RecBole's own ``enable_amp`` is replaced by it;
    * ``compile``: the training loss runs through ``torch.compile``.
    """

    def __init__(self, config, model):
        precision = training_precision(config)
        super().__init__(config, model)
        self.autocast_dtype = PRECISIONS[precision]
        self.enable_amp = False  # SRTTrainer autocasts itself, with the dtype precision names
        self.enable_scaler = precision == "fp16"
        self.loss = torch.compile(model.calculate_loss) if config["compile"] else model.calculate_loss

    def _build_optimizer(self, **kwargs):
        params = kwargs.get("params") or self.model.parameters()
        return build_optimizer(self.config, params, kwargs.get("learning_rate", self.learning_rate))

    def _precise_loss(self, interaction):
        if self.autocast_dtype is None:
            return self.loss(interaction)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self.loss(interaction)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        loss_func = loss_func or self._precise_loss
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    def fit(
        self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None
    ):
        self.optimizer.total_steps = self.epochs * len(train_data)  # the schedule's length
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)


def recording(trainer_class: type[Trainer]) -> type[Trainer]:
    """``trainer_class`` with :class:`EpochRecorder` (itself, if it records already)."""
    if issubclass(trainer_class, EpochRecorder):
        return trainer_class
    return type(f"Recording{trainer_class.__name__}", (EpochRecorder, trainer_class), {})
