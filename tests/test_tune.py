"""benchmarks/tune.py: candidates trained on the validation split only, test never scored."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from conftest import write_tiny_dataset

from benchmarks import tune


@pytest.mark.slow
def test_tune_ranks_candidates_on_valid_and_never_scores_test(tmp_path, capsys):
    write_tiny_dataset(tmp_path / "data", n_users=60)
    grid = tmp_path / "grid.yaml"
    tiny = {
        "hidden_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "MAX_ITEM_LIST_LENGTH": 10,
        "train_batch_size": 64,
    }
    grid.write_text(
        yaml.safe_dump(
            {
                "dataset": "tiny",
                "model": "SRT",
                "settings": {**tiny, "epochs": 2},
                "candidates": {"dot": {}, "cosine": {"similarity": "cosine", "temperature": 0.1}},
            }
        )
    )
    out = tmp_path / "out"
    argv = [f"--grid={grid}", f"--out={out}", f"--data-dir={tmp_path / 'data'}"]
    assert tune.main(argv) == 0

    rows = pd.read_csv(out / "tune.csv")
    assert list(rows["valid_ndcg@10"]) == sorted(rows["valid_ndcg@10"], reverse=True)
    assert not [c for c in rows if c.startswith(("test_", "cold_", "unseen_"))]
    for name in ("dot", "cosine"):
        row = json.loads((out / "runs" / f"{name}.json").read_text())
        assert len(row["valid_curve"]) == row["epochs_run"] == 2
        # the reported valid score is the best epoch's, the one early stopping kept
        assert row["valid_ndcg@10"] == pytest.approx(row["valid_curve"][row["best_epoch"] - 1], abs=1e-4)
        assert row["valid_ndcg@10"] == pytest.approx(max(row["valid_curve"]), abs=1e-4)
    assert json.loads((out / "runs" / "cosine.json").read_text())["overrides"] == {
        "similarity": "cosine",
        "temperature": 0.1,
    }
    assert (out / "tune.png").stat().st_size > 0 and "cosine" in (out / "tune.md").read_text()

    capsys.readouterr()
    assert tune.main([*argv, "--only", "dot"]) == 0
    assert "1 of 1 candidates done earlier" in capsys.readouterr().out
    assert len(pd.read_csv(out / "tune.csv")) == 2  # the table still covers the whole grid
    with pytest.raises(SystemExit, match="no such candidates"):
        tune.main([*argv, "--only", "cosin"])
