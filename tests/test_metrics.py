"""Ranking metrics: full ranks as RecBole breaks ties, and the SRT paper's sampled-negative metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbole_srt.metrics import full_ranks, ranking_metrics, sampled_candidates, sampled_ranks


def test_sampled_candidates_are_fixed_per_user_uniform_and_never_padding():
    users = np.array([3, 7, 3])
    a = sampled_candidates(users, n_items=50, n_negatives=10_000, seed=0)
    assert a.shape == (3, 10_000) and a.min() >= 1 and a.max() <= 49
    np.testing.assert_array_equal(a[0], a[2])  # the same user gets the same candidates
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(
        a, sampled_candidates(users, 50, 10_000, seed=1)
    )
    counts = np.bincount(a[1], minlength=50)[1:]
    assert counts.min() > 0.8 * 10_000 / 49 and counts.max() < 1.2 * 10_000 / 49


def test_sampled_rank_counts_distinct_candidates_at_or_above_the_target_except_the_target_itself():
    scores = torch.tensor([[-float("inf"), 0.9, 0.5, 0.1, 0.5]])
    users = torch.tensor([11])
    candidates = set(sampled_candidates(users.numpy(), 5, 50)[0].tolist())
    assert {1, 4} <= candidates and len(candidates) == 4  # each of the 4 items drawn ~12 times
    rank = sampled_ranks(scores, torch.tensor([2]), users, n_negatives=50)
    # 1 (0.9) and 4 (0.5, a tie) beat item 2, once each however often drawn; 3 and the target do not
    assert int(rank) == 2


def test_on_a_catalog_smaller_than_the_draws_the_sampled_rank_is_the_full_rank():
    torch.manual_seed(0)
    scores = torch.randn(64, 300)
    targets, users = torch.randint(1, 300, (64,)), torch.arange(64)
    ranks = sampled_ranks(scores, targets, users)  # 10,000 draws cover all 299 items
    beaten = (scores[:, 1:] >= scores.gather(1, targets.view(-1, 1))).sum(1) - 1  # minus the target
    assert torch.equal(ranks, beaten)


def test_full_ranks_follow_topk_and_metrics_by_hand():
    scores = torch.tensor([[0.0, 3.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0]])
    assert full_ranks(scores, torch.tensor([2, 1]), depth=2).tolist() == [1, 2]
    metrics = ranking_metrics(np.array([0, 3, 15, 40]))
    assert metrics["recall@10"] == pytest.approx(2 / 4) and metrics["recall@20"] == pytest.approx(3 / 4)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / np.log2(5)) / 4)
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 4) / 4)
