"""Optimisers and learning-rate schedules for :class:`recbole_srt.trainer.SRTTrainer`, stepped per batch.

:func:`build_optimizer` turns the config into a :class:`ScheduledOptimizer`:

* ``learner`` (RecBole's key: ``adam``, ``adamw``, ``sgd``) with ``weight_decay`` on matrices only
  (biases, LayerNorm weights and other 1-D tensors never decay); ``decoupled_weight_decay: True``
  makes ``adam`` decay the AdamW way;
* ``lr_scheduler``: ``constant``, ``warmup_cosine`` (linear warm-up over ``warmup_fraction`` of the
  steps, then cosine down to ``final_lr_ratio`` of the peak) or ``onecycle`` (cosine up from peak/25
  over ``warmup_fraction``, then cosine down to peak/25e4, as ``torch.optim.lr_scheduler.OneCycleLR``
  without momentum cycling);
* ``optimizer_switch``: ``{at: 0.8, learner: sgd, learning_rate: 0.01, momentum: 0.9}`` moves to a
  second optimiser once ``at`` of the budget's steps are done (Zhang et al.'s Adam -> SGD), which
  then follows the same schedule from its own rate.

The schedule's position and both optimisers' states are in :meth:`ScheduledOptimizer.state_dict`,
which RecBole saves in every checkpoint and ``resume_checkpoint`` restores, so a resumed run
continues at the same step, rate and optimiser.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("constant", "warmup_cosine", "onecycle")
LEARNERS = ("adam", "adamw", "sgd")
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4  # OneCycleLR's defaults


def lr_factor(schedule: str, step: int, total: int, warmup_fraction: float, final_ratio: float) -> float:
    """Multiplier of the peak rate at ``step`` (0-based) of ``total`` steps."""
    if schedule == "constant" or total <= 0:
        return 1.0
    warmup = max(1, round(warmup_fraction * total)) if warmup_fraction > 0 else 0
    if schedule == "warmup_cosine":
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    # onecycle: cosine from 1/DIV up to 1 during the warm-up, then down to 1/(DIV * FINAL_DIV)
    start, end = 1 / ONECYCLE_DIV, 1 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    if step < warmup:
        low, progress = start, step / max(1, warmup)
    else:
        low, progress = end, 1 - min(1.0, (step - warmup) / max(1, total - warmup))
    return low + (1 - low) * 0.5 * (1 - math.cos(math.pi * progress))


def make_optimizer(
    learner: str, params, learning_rate: float, weight_decay: float, decoupled: bool, momentum: float = 0.0
) -> torch.optim.Optimizer:
    """One torch optimiser over the trainable ``params``; weight decay on matrices only."""
    learner = learner.lower()
    if learner not in LEARNERS:
        raise ValueError(f"learner must be one of {LEARNERS} for SRT, got {learner!r}")
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if learner == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum)
    kind = torch.optim.AdamW if learner == "adamw" or decoupled else torch.optim.Adam
    return kind(groups, lr=learning_rate)


class ScheduledOptimizer:
    """The active optimiser of ``optimizers`` with its rate set per step (see the module docstring).

    Duck-types ``torch.optim.Optimizer`` where RecBole's trainer and ``GradScaler`` use it:
    ``zero_grad``, ``step``, ``param_groups``, ``state_dict``, ``load_state_dict``.
    """

    def __init__(
        self,
        optimizers: list[torch.optim.Optimizer],
        switch_at: float | None,
        schedule: str,
        warmup_fraction: float,
        final_lr_ratio: float,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"lr_scheduler must be one of {SCHEDULES}, got {schedule!r}")
        self.optimizers, self.switch_at = optimizers, switch_at
        self.schedule, self.warmup_fraction, self.final_lr_ratio = schedule, warmup_fraction, final_lr_ratio
        self.peak_lrs = [[g["lr"] for g in o.param_groups] for o in optimizers]
        self.step_count, self.total_steps = 0, 0

    @property
    def active_index(self) -> int:
        switched = self.switch_at is not None and 0 < self.switch_at * self.total_steps <= self.step_count
        return 1 if switched and len(self.optimizers) > 1 else 0

    @property
    def active(self) -> torch.optim.Optimizer:
        return self.optimizers[self.active_index]

    @property
    def param_groups(self) -> list[dict]:
        return self.active.param_groups

    def _factor(self) -> float:
        return lr_factor(self.schedule, self.step_count, self.total_steps, self.warmup_fraction,
                         self.final_lr_ratio)  # fmt: skip

    def current_lr(self) -> float:
        """The rate the next step uses (of the first parameter group)."""
        return self.peak_lrs[self.active_index][0] * self._factor()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.active.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        index, factor = self.active_index, self._factor()
        for group, peak in zip(self.optimizers[index].param_groups, self.peak_lrs[index], strict=True):
            group["lr"] = peak * factor
        result = self.optimizers[index].step(closure)
        self.step_count += 1
        return result

    def state_dict(self) -> dict:
        return {
            "step_count": self.step_count,
            "total_steps": self.total_steps,
            "optimizers": [o.state_dict() for o in self.optimizers],
        }

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.total_steps = state["step_count"], state["total_steps"]
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)


def build_optimizer(config, params, learning_rate: float) -> ScheduledOptimizer:
    """The :class:`ScheduledOptimizer` that ``config`` describes, over ``params``."""
    params = list(params)
    weight_decay, decoupled = config["weight_decay"] or 0.0, bool(config["decoupled_weight_decay"])
    optimizers = [make_optimizer(config["learner"], params, learning_rate, weight_decay, decoupled)]
    switch = config["optimizer_switch"]
    if switch:
        unknown = set(switch) - {"at", "learner", "learning_rate", "momentum", "weight_decay"}
        if unknown or not 0 < switch.get("at", -1) < 1:
            raise ValueError(f"optimizer_switch needs at in (0, 1) and known keys only, got {switch}")
        optimizers.append(
            make_optimizer(
                switch.get("learner", "sgd"),
                params,
                switch.get("learning_rate", learning_rate),
                switch.get("weight_decay", weight_decay),
                decoupled,
                momentum=switch.get("momentum", 0.0),
            )
        )
    return ScheduledOptimizer(
        optimizers,
        switch["at"] if switch else None,
        config["lr_scheduler"],
        config["warmup_fraction"],
        config["final_lr_ratio"],
    )
