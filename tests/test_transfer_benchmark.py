"""benchmarks/transfer.py on tiny data: every row per seed, a table of seed means, and --resume skips work."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import write_tiny_dataset

from benchmarks import transfer


def dataset_yaml(root, name, seed):
    folder = write_tiny_dataset(root, name, n_users=30, n_items=20, seed=seed)
    (folder / f"{name}.yaml").write_text(
        f"data_path: {root}\nload_col:\n  inter: [user_id, item_id, rating, timestamp]\n"
    )
    return folder / f"{name}.yaml"


@pytest.mark.slow
def test_rows_per_seed_table_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pre, target = dataset_yaml(tmp_path, "pre", 1), dataset_yaml(tmp_path, "tgt", 2)
    settings = "{MAX_ITEM_LIST_LENGTH: 10, train_batch_size: 64, eval_batch_size: 64, epochs: 1}"
    argv = ["--pretrain", str(pre), "--target", str(target), "--hidden-size", "16", "--strategies", "full",
            "--epochs", "1", "--pretrain-epochs", "1", "--settings", settings,
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert transfer.main([*argv, "--seeds", "2"]) == 0
    runs = pd.read_csv(tmp_path / "out" / "transfer.csv")
    assert sorted(zip(runs["init"], runs["seed"], strict=True)) == [
        ("pre-trained, full", 0), ("pre-trained, full", 1), ("scratch", 0), ("scratch", 1), ("zero-shot", 0)
    ]  # fmt: skip
    assert runs["test_ndcg@10"].between(0, 1).all() and (runs["target"] == "tgt").all()
    table = (tmp_path / "out" / "transfer.md").read_text()
    assert "ndcg@10_mean" in table and "ndcg@10_std" in table
    pretrained = json.loads((tmp_path / "out" / "pretrain-H16.json").read_text())

    calls = []
    monkeypatch.setattr(transfer, "run", lambda *a, **k: calls.append("run") or pytest.fail("re-ran"))
    monkeypatch.setattr(
        transfer, "finetune", lambda *a, **k: calls.append("finetune") or pytest.fail("re-ran")
    )
    assert transfer.main([*argv, "--seeds", "2", "--resume"]) == 0  # nothing left to do
    assert calls == [] and json.loads((tmp_path / "out" / "pretrain-H16.json").read_text()) == pretrained
    assert len(pd.read_csv(tmp_path / "out" / "transfer.csv")) == 5


def test_bad_arguments_are_one_line(tmp_path, capsys):
    target = dataset_yaml(tmp_path, "tgt", 2)
    with pytest.raises(SystemExit):
        transfer.main(["--pretrain", str(tmp_path / "missing.yaml"), "--target", str(target)])
    assert "missing.yaml: no such dataset YAML" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        transfer.main(["--pretrain", str(target), "--target", str(target), "--settings", "[1, 2]"])
    assert "--settings must be a YAML mapping" in capsys.readouterr().err
