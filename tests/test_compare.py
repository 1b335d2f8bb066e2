"""benchmarks/compare.py: one epoch per model on a tiny dataset, cold start included."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import make_srt, write_tiny_dataset
from recbole.evaluator.metrics import NDCG
from torch import nn

from benchmarks import compare
from benchmarks.compare import DatasetSpec, hold_out_items, target_ranks
from recbole_srt.metrics import ranking_metrics
from recbole_srt.model.params import catalog_params

TINY_SETTINGS = [
    "--hidden_size=16",
    "--inner_size=32",
    "--n_layers=1",
    "--MAX_ITEM_LIST_LENGTH=10",
    "--train_batch_size=64",
]


def test_ranks_break_ties_like_recboles_evaluator():
    """Identical texts give SRT identical scores: ranks follow RecBole's topk, not an optimistic count."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (64, 30), generator=g).float()  # heavy ties
    scores[:, 0] = float("-inf")
    targets = torch.randint(1, 30, (64,), generator=g)

    class Trainer:
        model = nn.Identity()
        model.USER_ID = "user_id"

        def _full_sort_batch_eval(self, batch):
            return {"user_id": torch.arange(100, 164)}, scores, torch.arange(64), targets

    users, _, ranks = target_ranks(Trainer(), [None])
    assert users.tolist() == list(range(100, 164))
    # RecBole ranks with topk(max(topk)); compare.py's shared settings use topk [10, 20]
    top = torch.topk(scores, 20, dim=-1).indices
    recbole_ndcg = (
        NDCG({"topk": [10, 20], "metric_decimal_place": 4})
        .metric_info((top == targets.unsqueeze(1)).numpy(), np.ones(64, dtype=int))[:, 9]
        .mean()
    )
    assert ranking_metrics(ranks)["ndcg@10"] == pytest.approx(recbole_ndcg)
    strictly_greater = (scores > scores.gather(1, targets.unsqueeze(1))).sum(1).numpy()
    assert ranking_metrics(strictly_greater)["ndcg@10"] > recbole_ndcg  # the optimistic count differs


def test_catalog_params_counts_item_tables_not_layers_of_the_same_width():
    srt = make_srt(31, inner_size=32)  # a feed-forward width equal to n_items + 1
    assert catalog_params(srt, 31) == 0

    class IdModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.item_embedding = nn.Embedding(32, 16)  # n_items + mask token
            self.output_bias = nn.Parameter(torch.zeros(31))
            self.ffn = nn.Linear(16, 32)

    assert catalog_params(IdModel(), 31) == 32 * 16 + 31


def test_training_counts_follow_recboles_leave_one_out(tmp_path):
    folder = write_tiny_dataset(tmp_path, n_users=30)
    spec = DatasetSpec("tiny", tmp_path, [str(folder / "tiny.yaml")])
    inter = pd.read_csv(folder / "tiny.inter", sep="\t", dtype=str)
    tokens = ["[PAD]", *sorted(inter["item_id:token"].unique())]
    counts = compare.training_counts(spec, tokens)
    lengths = inter.groupby("user_id:token").size()
    assert lengths.min() >= 4  # every user has a valid and a test target: both leave training
    assert counts[0] == 0 and counts.sum() == len(inter) - 2 * inter["user_id:token"].nunique()
    # a user with 3 interactions keeps its second in training (RecBole leaves one target at least)
    short = inter[inter["user_id:token"] == lengths.index[0]].iloc[:3]
    rest = inter[inter["user_id:token"] != lengths.index[0]]
    pd.concat([rest, short]).to_csv(folder / "tiny.inter", sep="\t", index=False)
    assert compare.training_counts(spec, tokens).sum() == len(rest) - 2 * rest["user_id:token"].nunique() + 2
    folder.joinpath("tiny.inter").write_text(inter.to_csv(sep="\t", index=False))
    cold, held_out = hold_out_items(spec, 0.2, seed=3, out_dir=tmp_path / "derived")
    cold_counts = compare.training_counts(cold, tokens)
    assert all(cold_counts[tokens.index(t)] == 0 for t in held_out)


def test_held_out_items_only_remain_as_last_interactions(tmp_path):
    folder = write_tiny_dataset(tmp_path, n_users=60)
    spec = DatasetSpec("tiny", tmp_path, [str(folder / "tiny.yaml")])
    cold, held_out = hold_out_items(spec, 0.2, seed=3, out_dir=tmp_path / "derived")
    assert len(held_out) == 6
    inter = pd.read_csv(cold.folder / f"{cold.name}.inter", sep="\t", dtype=str)
    inter = inter.sort_values(
        ["user_id:token", "timestamp:float"],
        key=lambda c: c.astype(float if c.name.startswith("timestamp") else str),
        kind="stable",
    )
    last = ~inter.duplicated("user_id:token", keep="last")
    in_held_out = inter["item_id:token"].isin(held_out)
    assert in_held_out.any() and not (in_held_out & ~last).any()
    assert inter.groupby("user_id:token").size().min() >= 3


@pytest.mark.slow
def test_compare_end_to_end_and_rerun_skips(tmp_path, capsys):
    write_tiny_dataset(tmp_path / "data", n_users=60)
    out = tmp_path / "out"
    argv = [
        "--dataset=tiny",
        f"--data-dir={tmp_path / 'data'}",
        "--models",
        "SRT",
        "SASRec",
        "BERT4Rec",
        "--seeds=1",
        "--epochs=1",
        f"--out={out}",
        "--cold-start",
        "--cold-fraction=0.2",
        *TINY_SETTINGS,
    ]
    assert compare.main(argv) == 0

    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 6 and set(rows["dataset"]) == {"tiny", "tiny-cold20"}
    # our per-user ranks (for the slices) reproduce RecBole's own evaluator (which rounds to 4 decimals)
    np.testing.assert_allclose(rows["ranked_test_ndcg@10"], rows["test_ndcg@10"], atol=6e-5)
    by_model = rows[rows["dataset"] == "tiny"].set_index("model")
    assert by_model.loc["SRT", "params_catalog"] == 0 and by_model.loc["SASRec", "params_catalog"] > 0
    assert (rows["scoring_users_per_s"] > 0).all() and (rows["peak_rss_mb"] > 0).all()
    assert (rows["epochs_run"] == 1).all() and (rows["train_targets_per_s"] > 0).all()
    assert rows["test_sampled_ndcg@5"].between(0, 1).all() and rows["valid_sampled_ndcg@5"].notna().all()
    assert "sampled_ndcg@5" in (out / "results.md").read_text()
    cold = rows[rows["dataset"] == "tiny-cold20"]
    assert (cold["cold_test_users"] > 0).all() and cold["cold_ndcg@10"].between(0, 1).all()
    # every test target is warm or unseen, lies in one popularity bin, and held-out items are never seen
    users = rows[[f"test_pop{b}_users" for b in compare.POPULARITY_LABELS]].sum(axis=1)
    assert (rows["warm_test_users"] + rows["unseen_test_users"] == users).all()
    assert (rows[[f"valid_pop{b}_users" for b in compare.POPULARITY_LABELS]].sum(axis=1) == users).all()
    assert (rows["test_users_with_valid"] == users).all()  # every tiny user has >= 4 interactions
    np.testing.assert_allclose(rows["test_with_valid_ndcg@10"], rows["ranked_test_ndcg@10"])
    assert (rows["unseen_test_users"] == rows["test_pop0_users"]).all()
    assert (cold["test_pop0_users"] >= cold["cold_test_users"]).all()
    table = (out / "results.md").read_text()
    assert all(m in table for m in ("SRT", "SASRec", "BERT4Rec")) and "Cold start" in table
    assert "From valid to test" in table
    assert (out / "results.png").stat().st_size > 0

    capsys.readouterr()
    assert compare.main(argv) == 0
    assert capsys.readouterr().out.count("done earlier, skipped") == 6


@pytest.mark.slow
def test_valid_split_grid_ranks_candidates_and_never_scores_test(tmp_path, capsys):
    write_tiny_dataset(tmp_path / "data", n_users=60)
    grid = tmp_path / "grid.yaml"
    candidates = {"dot": {"similarity": "dot"}, "cosine": {"similarity": "cosine", "temperature": 0.1}}
    grid.write_text(yaml.safe_dump({"model": "SRT", "settings": {"epochs": 2}, "candidates": candidates}))
    out = tmp_path / "out"
    argv = ["--dataset=tiny", f"--data-dir={tmp_path / 'data'}", f"--grid={grid}", "--split=valid"]
    argv += ["--seeds=1", f"--out={out}", "--workers=2", *TINY_SETTINGS]
    assert compare.main(argv) == 0

    rows = pd.read_csv(out / "results.csv")
    assert set(rows["label"]) == {"dot", "cosine"}
    assert not [c for c in rows if c.startswith(("test_", "cold_", "unseen_", "ranked_"))]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["valid_ndcg@10"]) == sorted(summary["valid_ndcg@10"], reverse=True)
    for name in ("dot", "cosine"):
        row = json.loads((out / "runs" / f"tiny__{name}__seed2020.json").read_text())
        assert len(row["valid_curve"]) == row["epochs_run"] == 2
        assert row["overrides"] == candidates[name]
        # the reported valid score is the best epoch's, the one early stopping kept
        assert row["valid_ndcg@10"] == pytest.approx(row["valid_curve"][row["best_epoch"] - 1], abs=1e-4)
        assert row["valid_ndcg@10"] == pytest.approx(max(row["valid_curve"]), abs=1e-4)
    assert "cosine" in (out / "results.md").read_text() and (out / "results.png").stat().st_size > 0


def test_a_mistyped_setting_is_refused_with_the_closest_key(tmp_path):
    with pytest.raises(SystemExit, match="unknown setting 'hiden_size'; did you mean hidden_size"):
        compare.main(["--dataset=ml-100k", f"--out={tmp_path}", "--hiden_size=8"])
    with pytest.raises(SystemExit, match="fixed by the protocol"):
        compare.main(["--dataset=ml-100k", f"--out={tmp_path}", "--topk=[5]"])


def test_candidates_pick_a_subset_of_a_grid(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"model": "SRT", "candidates": {"a": {}, "b": {"model": "SASRec"}}}))
    args, _ = compare.parse_args([f"--grid={grid}", "--candidates", "b"])
    assert compare.candidates(args) == ({"b": ("SASRec", {})}, {})
    args, _ = compare.parse_args([f"--grid={grid}", "--candidates", "c"])
    with pytest.raises(SystemExit, match=r"no candidates \['c'\]; it has \['a', 'b'\]"):
        compare.candidates(args)


def test_winners_pick_each_models_best_candidate_and_flag_budget_bound_runs():
    labels = {
        "srt-a": ("SRT", {}),
        "srt-b": ("SRT", {"x": 1}),
        "sas-a": ("SASRec", {}),
        "sas-b": ("SASRec", {}),
        "ids": ("SRT", {"item_id_embedding": "add"}),  # SRT with IDs is tuned as a model of its own
    }
    rows = pd.DataFrame({
        "label": ["srt-a", "srt-a", "srt-b", "srt-b", "sas-a", "sas-b", "ids"],
        "valid_ndcg@10": [0.10, 0.14, 0.13, 0.12, 0.05, 0.04, 0.20],
        "best_epoch": [3, 5, 2, 4, 9, 7, 4],
        "epochs_run": [8, 5, 6, 9, 9, 10, 8],
    })  # fmt: skip
    chosen, table = compare.winners(rows, labels)
    assert chosen == {  # srt-b: mean 0.125 > 0.12
        "srt-b": ("SRT", {"x": 1}), "sas-a": ("SASRec", {}), "ids": ("SRT", {"item_id_embedding": "add"})
    }  # fmt: skip
    table = table.set_index("model")
    assert table.loc["SRT", "candidates tried"] == 2 and table.loc["SASRec", "chosen"] == "sas-a"
    assert table.loc["SASRec", "runs whose best epoch was the last"] == 1
    assert table.loc["SRT", "runs whose best epoch was the last"] == 0


@pytest.mark.slow
def test_tune_runs_candidates_on_valid_then_each_models_best_on_test(tmp_path, capsys):
    write_tiny_dataset(tmp_path / "data", n_users=60)
    grid = tmp_path / "grid.yaml"
    candidates = {
        "dot": {"similarity": "dot"},
        "cosine": {"similarity": "cosine"},
        "sas": {"model": "SASRec"},
    }
    grid.write_text(yaml.safe_dump({"model": "SRT", "settings": {"epochs": 1}, "candidates": candidates}))
    out = tmp_path / "out"
    argv = ["--dataset=tiny", f"--data-dir={tmp_path / 'data'}", f"--grid={grid}", "--tune", "--seeds=2"]
    assert compare.main([*argv, f"--out={out}", "--workers=2", *TINY_SETTINGS]) == 0
    assert len(list((out / "runs-valid").glob("*.json"))) == 3  # every candidate, on valid
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 4 and set(rows["model"]) == {"SRT", "SASRec"}  # two winners x two seeds, on test
    tuning = (out / "tuning.md").read_text()
    assert "candidates tried" in tuning and "sas" in tuning
    with pytest.raises(SystemExit):
        compare.parse_args(["--tune"])  # no grid
