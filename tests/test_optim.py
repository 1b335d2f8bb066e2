"""SRTTrainer's optimisers and schedules: shapes of the schedules, the switch, checkpoint round trips."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, make_srt, tiny_config, write_tiny_dataset

from recbole_srt.optim import build_optimizer, lr_factor
from recbole_srt.pipeline import make_config, run

OPTIM = {"learner": "adam", "weight_decay": 0.0, "decoupled_weight_decay": False, "optimizer_switch": None,
         "lr_scheduler": "constant", "warmup_fraction": 0.0, "final_lr_ratio": 0.0}  # fmt: skip


def test_schedules_have_their_shapes():
    total = 100
    warm = [lr_factor("warmup_cosine", t, total, 0.1, 0.1) for t in range(total)]
    assert warm[0] == pytest.approx(0.1) and warm[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(warm[10:], warm[11:], strict=False)) and warm[-1] == pytest.approx(
        0.1, abs=1e-3
    )
    one = [lr_factor("onecycle", t, total, 0.3, 0.0) for t in range(total)]
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0) and one.index(max(one)) == 30
    assert one[-1] < 1e-3 and lr_factor("constant", 50, total, 0.3, 0.0) == 1.0


def test_weight_decay_skips_biases_and_norms_and_the_switch_moves_to_sgd():
    model = make_srt(10)
    switch = {"at": 0.5, "learner": "sgd", "learning_rate": 0.05, "momentum": 0.9}
    config = {**OPTIM, "weight_decay": 0.1, "decoupled_weight_decay": True, "optimizer_switch": switch}
    optimizer = build_optimizer(config, model.parameters(), 1e-3)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert isinstance(optimizer.active, torch.optim.AdamW)
    optimizer.total_steps = 4
    for _ in range(4):
        optimizer.zero_grad()
        model.calculate_loss(make_batch(10)).backward()
        optimizer.step()
        if optimizer.step_count == 2:
            assert isinstance(optimizer.active, torch.optim.SGD) and optimizer.current_lr() == pytest.approx(
                0.05
            )
    assert optimizer.optimizers[1].state  # SGD has taken steps (momentum buffers)


def test_state_dict_round_trip_keeps_the_position_and_both_optimizers():
    model = make_srt(10)
    config = {**OPTIM, "lr_scheduler": "warmup_cosine", "warmup_fraction": 0.5,
              "optimizer_switch": {"at": 0.5, "learning_rate": 0.05}}  # fmt: skip
    first = build_optimizer(config, model.parameters(), 1e-3)
    first.total_steps = 10
    for _ in range(6):
        model.calculate_loss(make_batch(10)).backward()
        first.step()
    second = build_optimizer(config, model.parameters(), 1e-3)
    second.load_state_dict(first.state_dict())
    assert second.step_count == 6 and second.active_index == 1
    assert second.current_lr() == pytest.approx(first.current_lr())


@pytest.mark.slow
def test_resume_continues_the_schedule_where_it_stopped(tmp_path):
    write_tiny_dataset(tmp_path)
    settings = tiny_config(tmp_path, epochs=3, lr_scheduler="warmup_cosine", warmup_fraction=0.3)
    full = run(make_config("SRT", "tiny", config_dict=settings))
    steps_per_epoch = full.trainer.optimizer.step_count // 3

    one = run(make_config("SRT", "tiny", config_dict={**settings, "epochs": 1, "stopping_step": 10}))
    state = torch.load(one.record.checkpoint, weights_only=False)["optimizer"]
    assert state["step_count"] == steps_per_epoch and state["total_steps"] == steps_per_epoch
    resumed = run(
        make_config("SRT", "tiny", config_dict=settings), resume=full.record.checkpoint, saved=False
    )
    saved = torch.load(full.record.checkpoint, weights_only=False)
    best_epoch = saved["epoch"]
    # RecBole resumes after the checkpoint's epoch: the schedule continues from that epoch's last step
    assert resumed.trainer.optimizer.step_count == 3 * steps_per_epoch
    assert len(resumed.record.epochs) == 3 - (best_epoch + 1)
