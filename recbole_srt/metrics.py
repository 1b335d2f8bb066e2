"""Leave-one-out metrics from each user's target rank: full ranking, and the SRT paper's sampled one.

The paper reports NDCG@5 against 10,000 uniformly sampled negatives per test user. Here the
candidates of user ``u`` are a fixed function of ``(seed, u)`` (a splitmix64 hash, uniform over the
catalog without padding), so every model is scored on the same candidates, and the rank comes from
the full score row the evaluator computes anyway: no extra forward pass. Candidates equal to the
target are ignored; ties count against the target (a catalog with identical texts cannot gain).
An item drawn more than once counts once (about 9 % of the draws repeat an item on a 50,000-item
catalog, 0.5 % on the paper's millions), so on a catalog smaller than 10,000 items the rank approaches
the full-catalog rank instead of being multiplied by the number of copies (which made NDCG@5 the hit
rate at 1 there).
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLED_NEGATIVES = 10_000
SAMPLED_KS = (5,)
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def ranking_metrics(
    ranks: np.ndarray, ks: tuple[int, ...] = (10, 20), mrr_k: int | None = 10
) -> dict[str, float]:
    """Recall@k, NDCG@k (and MRR@``mrr_k``) from 0-based ranks of each user's single target."""
    if len(ranks) == 0:
        return {}
    metrics = {}
    for k in ks:
        hit = ranks < k
        metrics[f"recall@{k}"] = float(hit.mean())
        metrics[f"ndcg@{k}"] = float(np.where(hit, 1 / np.log2(ranks + 2), 0).mean())
    if mrr_k:
        metrics[f"mrr@{mrr_k}"] = float(np.where(ranks < mrr_k, 1 / (ranks + 1), 0).mean())
    return metrics


def sampled_candidates(users: np.ndarray, n_items: int, n_negatives: int, seed: int = 0) -> np.ndarray:
    """``[len(users), n_negatives]`` item ids in ``1 .. n_items - 1``, a fixed function of (seed, user)."""
    with np.errstate(over="ignore"):
        draw = np.arange(n_negatives, dtype=np.uint64)
        z = users.astype(np.uint64)[:, None] * np.uint64(n_negatives) + draw
        z = z + np.uint64((seed * _MIX[0] + _MIX[0]) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX[1])
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX[2])
        z = z ^ (z >> np.uint64(31))
    return (1 + z % np.uint64(n_items - 1)).astype(np.int64)


def sampled_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    users: torch.Tensor,
    n_negatives: int = SAMPLED_NEGATIVES,
    seed: int = 0,
    rows: int = 128,
) -> torch.Tensor:
    """0-based rank of each row's target among itself and its distinct sampled candidates;
    ``scores`` ``[B, N]``.

    Computed ``rows`` users at a time, so memory stays at ``rows * n_negatives`` whatever ``B``.
    """
    ranks = []
    for start in range(0, len(targets), rows):
        part = slice(start, start + rows)
        block, target = scores[part], targets[part].view(-1, 1)
        ids = sampled_candidates(users[part].cpu().numpy(), scores.shape[1], n_negatives, seed)
        candidates = torch.from_numpy(ids).to(scores.device).sort(dim=1).values
        first = torch.ones_like(candidates, dtype=torch.bool)
        first[:, 1:] = candidates[:, 1:] != candidates[:, :-1]  # one vote per distinct item
        beaten = (block.gather(1, candidates) >= block.gather(1, target)) & (candidates != target) & first
        ranks.append(beaten.sum(1))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=scores.device)


def full_ranks(scores: torch.Tensor, targets: torch.Tensor, depth: int) -> torch.Tensor:
    """0-based rank of each row's target as RecBole's evaluator ranks (``torch.topk(depth)``, so ties are
    broken the same way); a target outside the top ``depth`` gets rank ``depth``."""
    top = torch.topk(scores, min(depth, scores.shape[1]), dim=-1).indices
    hit = top == targets.view(-1, 1)
    return torch.where(hit.any(1), hit.float().argmax(1).long(), torch.full_like(targets, depth))
