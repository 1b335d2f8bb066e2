"""One (model, dataset, seed) run of ``benchmarks/compare.py``, meant to run in its own process.

Trains with RecBole's own ``Trainer`` (early stopping on the valid metric, best checkpoint
reloaded for test), then measures what the comparison table reports: test metrics, the same
metrics on cold-start slices, parameters (trainable, and those that grow with the catalog),
seconds per training epoch, peak RSS and full-ranking scoring throughput.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import recbole_srt  # noqa: F401  (registers SRT, also in this worker process)

KS = (10, 20)


def ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    """Leave-one-out metrics from 0-based ranks of each user's single target item."""
    if len(ranks) == 0:
        return {}
    metrics = {}
    for k in KS:
        hit = ranks < k
        metrics[f"recall@{k}"] = float(hit.mean())
        metrics[f"ndcg@{k}"] = float(np.where(hit, 1 / np.log2(ranks + 2), 0).mean())
    metrics["mrr@10"] = float(np.where(ranks < 10, 1 / (ranks + 1), 0).mean())
    return metrics


def target_ranks(trainer, test_data) -> tuple[np.ndarray, np.ndarray]:
    """Target item id and its 0-based rank for every test user, exactly as RecBole's evaluator ranks.

    Scores come from ``Trainer._full_sort_batch_eval`` (padding and history masking included) and
    the ranking from ``torch.topk(max(KS))`` as RecBole's evaluator does with ``topk: [10, 20]`` (the
    shared setting), so tied scores (SRT gives items with identical text identical scores) are
    broken the same way. A target outside the top ``max(KS)`` gets rank ``max(KS)``. Call after
    ``trainer.evaluate``.
    """
    depth = max(KS)
    items, ranks = [], []
    trainer.model.eval()
    with torch.no_grad():
        for batched_data in test_data:
            _, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batched_data)
            top = torch.topk(
                scores[positive_u], min(depth, scores.shape[1]), dim=-1
            ).indices  # [users, depth]
            hit = top == positive_i.to(top.device).unsqueeze(1)
            rank = torch.where(
                hit.any(1), hit.float().argmax(1), torch.full_like(hit[:, 0], depth, dtype=torch.long)
            )
            ranks.append(rank.cpu().numpy())
            items.append(positive_i.cpu().numpy())
    return np.concatenate(items), np.concatenate(ranks)


def training_items(train_dataset, item_field: str, seq_field: str) -> set[int]:
    """Internal ids of every item that occurs in a training sequence or as a training target."""
    inter = train_dataset.inter_feat
    return (set(inter[item_field].tolist()) | set(inter[seq_field].flatten().tolist())) - {0}


def catalog_params(model: nn.Module, n_items: int) -> int:
    """Parameters that grow with the catalog: item tables and per-item parameters.

    Counts every ``nn.Embedding`` with one row per item (``n_items``, or ``n_items + 1`` with a mask
    token as in BERT4Rec) and parameters the model holds directly with a per-item dimension
    (BERT4Rec's output bias). Layer weights that merely happen to share the size are not counted.
    """
    sizes = {n_items, n_items + 1}
    tables = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings in sizes
    )
    own = sum(p.numel() for p in model.parameters(recurse=False) if sizes & set(p.shape))
    return tables + own


def scoring_throughput(model, test_data, device) -> float:
    """Users per second of ``full_sort_predict`` over the test users (no grad)."""
    model.eval()
    users, start = 0, time.perf_counter()
    with torch.no_grad():
        for interaction, *_ in test_data:
            model.full_sort_predict(interaction.to(device))
            users += len(interaction)
    return users / (time.perf_counter() - start)


def run_one(
    model_name: str,
    dataset: str,
    config_files: list[str],
    settings: dict,
    seed: int,
    checkpoint_dir: Path,
    cold_items: set[str] | None = None,
    evaluate_test: bool = True,
    progress: str | None = None,
    threads: int | None = None,
) -> dict:
    """Train and evaluate one model; return one result row.

    Metrics are prefixed ``valid_`` (the best epoch's, as early stopping saw them), ``test_``,
    ``unseen_`` and ``cold_``. With ``evaluate_test=False`` (tuning) the test split is never
    scored and the row holds training costs and ``valid_`` metrics only. With ``progress`` (a
    label), one line per epoch is printed: valid score and training seconds. ``threads`` caps
    torch's CPU threads (default: torch's own choice, all cores).
    """
    if threads:
        torch.set_num_threads(threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    sys.argv = sys.argv[:1]  # RecBole's Config would read the benchmark's own flags as overrides
    config = Config(
        model=model_name,
        dataset=dataset,
        config_file_list=config_files,
        config_dict={**settings, "seed": seed, "checkpoint_dir": str(checkpoint_dir)},
    )
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(model_name)(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)

    epoch_seconds: list[float] = []
    train_epoch = trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        loss = train_epoch(*args, **kwargs)
        epoch_seconds.append(time.perf_counter() - start)
        return loss

    valid_scores: list[float] = []
    valid_epoch = trainer._valid_epoch

    def recorded_valid_epoch(*args, **kwargs):
        score, result = valid_epoch(*args, **kwargs)
        valid_scores.append(float(score))
        if progress:
            print(
                f"{progress} epoch {len(valid_scores)}: valid {config['valid_metric']} {score:.4f}, "
                f"{epoch_seconds[-1]:.0f} s training",
                flush=True,
            )
        return score, result

    trainer._train_epoch = timed_train_epoch
    trainer._valid_epoch = recorded_valid_epoch
    started = time.perf_counter()
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    row = {
        "model": model_name,
        "dataset": dataset,
        "seed": seed,
        "epochs_run": len(epoch_seconds),
        # RecBole keeps the last of equal best scores (early_stopping compares with >=).
        "best_epoch": len(valid_scores) - int(np.argmax(valid_scores[::-1])),
        "valid_curve": [round(v, 5) for v in valid_scores],
        "s_per_epoch": float(np.mean(epoch_seconds)),
        "wall_s": time.perf_counter() - started,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "catalog_params": catalog_params(model, model.n_items),
        "n_items": model.n_items - 1,
        **{f"valid_{k}": float(v) for k, v in trainer.best_valid_result.items()},
    }
    if not evaluate_test:
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return row
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)

    item_field = config["ITEM_ID_FIELD"]
    targets, ranks = target_ranks(trainer, test_data)
    seen = training_items(train_data._dataset, item_field, item_field + config["LIST_SUFFIX"])
    unseen = np.array([item not in seen for item in targets.tolist()], dtype=bool)
    row.update(
        {
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "scoring_users_per_s": scoring_throughput(model, test_data, config["device"]),
            "test_users": len(ranks),
            **{f"test_{k}": v for k, v in ranking_metrics(ranks).items()},
            "recbole_test_ndcg@10": float(test_result["ndcg@10"]),
            "unseen_test_users": int(unseen.sum()),
            **{f"unseen_{k}": v for k, v in ranking_metrics(ranks[unseen]).items()},
        }
    )
    if cold_items is not None:
        id_of = {token: i for i, token in enumerate(train_data._dataset.field2id_token[item_field])}
        cold = np.isin(targets, [id_of[t] for t in cold_items if t in id_of])
        row["cold_test_users"] = int(cold.sum())
        row.update({f"cold_{k}": v for k, v in ranking_metrics(ranks[cold]).items()})
    return row
