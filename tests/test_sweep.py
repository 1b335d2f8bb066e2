"""The scaling sweep: presets, grid, data fractions, the results table, and the smoke sweep end to end."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, tiny_config, write_tiny_dataset
from recbole.config import Config
from recbole.data import create_dataset, data_preparation

from benchmarks import sweep
from recbole_srt.pipeline import subsample_users
from recbole_srt.sweep import recbole_settings

SWEEP = [sys.executable, str(REPO / "benchmarks" / "sweep.py")]


# --- presets and grid ---------------------------------------------------------------------------


def test_shipped_presets_load_by_path_and_by_name():
    by_path = sweep.load_preset(str(REPO / "properties" / "sweep" / "smoke.yaml"), {})
    assert by_path == sweep.load_preset("smoke", {})
    paper = sweep.load_preset("paper", {})
    assert paper["n_layers"] == [1, 2, 4, 8, 16] and paper["hidden_size"] == [64, 128, 256, 512]
    assert paper["data_fractions"] == [0.1, 0.25, 0.5, 1.0]


def test_set_overrides_parse_yaml_and_reach_nested_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--recbole.epochs=3", "--hidden_size=[8, 24]", "--data_path=data", "--scheduler={type: asha}"]
    preset = sweep.load_preset("smoke", sweep.parse_args(["--config=smoke", *args]).overrides)
    assert preset["recbole"]["epochs"] == 3 and preset["recbole"]["topk"] == [10]
    assert preset["hidden_size"] == [8, 24] and preset["scheduler"] == {"type": "asha"}
    assert preset["data_path"] == str(tmp_path / "data")  # absolute: workers run in their trial folders


def test_bad_presets_are_refused(capsys):
    with pytest.raises(ValueError, match="per_model.SRT: unknown keys"):
        sweep.load_preset("smoke", {"per_model": {"SRT": {"epochs": 2}}})
    for bad, message in (("--hidden_sizes=[8]", "did you mean hidden_size"), ("noequals", "--key=value")):
        with pytest.raises(SystemExit):
            sweep.parse_args(["--config=smoke", bad])
        assert message in capsys.readouterr().err


def test_smoke_grid_and_paper_grid():
    smoke = sweep.build_grid(sweep.load_preset("smoke", {}), gpu=0.0)
    names = [spec["name"] for spec in smoke]
    assert len(names) == 10 and "SRT-L1-H64-f0.2-s0" in names and "SASRec-L1-H16-f0.1-s0" in names
    assert not any(name.startswith(("SASRec-L1-H32", "BERT4Rec-L1-H64")) for name in names)
    paper = sweep.build_grid(sweep.load_preset("paper", {}), gpu=0.25)
    assert len(paper) == 3 * 5 * 4 * 4
    widest = next(s for s in paper if s["hidden_size"] == 512)
    assert (widest["n_heads"], widest["inner_size"], widest["gpu"]) == (8, 2048, 0.25)
    assert {s["n_heads"] for s in paper if s["hidden_size"] == 64} == {1}


def test_no_gpu_in_the_cluster_means_cpu_not_pending(monkeypatch):
    monkeypatch.setattr(sweep.ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.warns(UserWarning, match="no GPU"):
        assert sweep.trial_gpu(0.5) == 0.0
    monkeypatch.setattr(sweep.ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})
    assert sweep.trial_gpu(0.5) == 0.5
    with pytest.raises(ValueError):
        sweep.trial_gpu(2)


def test_worker_gets_the_gpus_ray_assigned(monkeypatch):
    spec = sweep.build_grid(sweep.load_preset("smoke", {}), gpu=0.5)[0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert recbole_settings(spec)["gpu_id"] == "3"
    assert recbole_settings({**spec, "gpu": 0})["gpu_id"] == ""  # RecBole: empty gpu_id = CPU


# --- data fractions -----------------------------------------------------------------------------


def test_data_fractions_are_nested_user_subsets_with_whole_sequences(tmp_path):
    folder = write_tiny_dataset(tmp_path, n_users=40)
    config = Config(
        model="SRT",
        dataset="tiny",
        config_file_list=[str(folder / "tiny.yaml")],
        config_dict=tiny_config(tmp_path, train_batch_size=8),
    )
    train, valid, test = data_preparation(config, create_dataset(config))
    uid = train._dataset.uid_field

    def users(loader) -> np.ndarray:
        return loader._dataset.inter_feat[uid].numpy()

    all_users = users(train)
    kept = {}
    for fraction in (0.25, 0.5, 1.0):
        loader = subsample_users(config, train, fraction, seed=0)
        kept[fraction] = set(users(loader))
        assert len(kept[fraction]) == round(fraction * len(set(all_users)))
        # every training sequence of a kept user is kept
        assert len(loader._dataset) == int(np.isin(all_users, list(kept[fraction])).sum())
        assert sum(len(batch) for batch in loader) == len(loader._dataset)
    assert kept[0.25] < kept[0.5] < kept[1.0]
    assert set(users(subsample_users(config, train, 0.5, seed=1))) != kept[0.5]
    assert len(valid._dataset) == len(test._dataset) == 40  # evaluation data is not subsampled


# --- the results table --------------------------------------------------------------------------


def _spec(name="SRT-L1-H16-f0.5-s0") -> dict:
    return {
        "name": name,
        "model": "SRT",
        "n_layers": 1,
        "hidden_size": 16,
        "n_heads": 1,
        "inner_size": 64,
        "data_fraction": 0.5,
        "seed": 0,
    }


def _report(epoch: int, best_epoch: int, ndcg: float) -> dict:
    return {
        "epoch": epoch,
        "best_epoch": best_epoch,
        "max_epochs": 4,
        "valid_ndcg@10": ndcg,
        "test_ndcg@10": ndcg / 2 if epoch == best_epoch else math.nan,
        "params_trainable": 10,
        "training_iteration": epoch + 1,
        "trial_id": "ray-id",
        "config/trial": "{}",
    }


def test_trial_rows_dedupe_restarts_and_flag_the_best_epoch():
    # epochs 0, 1, 2; crashed after 2, restarted from the best checkpoint (epoch 1), re-ran 2, stopped.
    reports = [_report(0, 0, 0.1), _report(1, 1, 0.3), _report(2, 1, 0.2), _report(2, 2, 0.4)]
    rows = sweep.trial_rows(_spec(), pd.DataFrame(reports), error=None, ended=True)
    assert list(rows.columns[: len(sweep.EPOCH_COLUMNS)]) == list(sweep.EPOCH_COLUMNS)
    assert "training_iteration" not in rows and "config/trial" not in rows
    assert rows["epoch"].tolist() == [0, 1, 2] and rows["trial_id"].unique().tolist() == [_spec()["name"]]
    assert rows["is_best_epoch"].tolist() == [False, False, True]
    assert rows["test_ndcg@10"].isna().tolist() == [True, True, False]
    assert set(rows["status"]) == {"EARLY_STOPPED"}  # 3 of max 4 epochs


def test_trial_rows_of_an_error_without_reports():
    rows = sweep.trial_rows(_spec(), None, error="InjectedFailure: boom", ended=False)
    assert len(rows) == 1 and rows.loc[0, "status"] == "ERROR" and math.isnan(rows.loc[0, "flops"])
    full = pd.DataFrame([_report(e, e, 0.1 * e) for e in range(4)])
    assert set(sweep.trial_rows(_spec(), full, None, ended=True)["status"]) == {"TERMINATED"}
    assert set(sweep.trial_rows(_spec(), full, None, ended=False)["status"]) == {"UNFINISHED"}  # interrupted
    assert set(sweep.trial_rows(_spec(), full[:2], "X: y", ended=False)["status"]) == {"ERROR"}
    assert sweep.ended_trials(None).empty and "error" in sweep.ended_trials(None)


def test_resumed_outputs_keep_earlier_ended_trials_and_prefer_the_latest_run():
    def rows(name: str, ndcg: float) -> pd.DataFrame:
        full = pd.DataFrame([_report(e, e, ndcg) for e in range(4)])
        return sweep.trial_rows(_spec(name), full, None, ended=True)

    earlier = pd.concat([rows("SRT-L1-H16-f0.5-s0", 0.1), rows("SRT-L1-H32-f0.5-s0", 0.2)], ignore_index=True)
    latest = pd.concat([rows("SRT-L1-H32-f0.5-s0", 0.3), rows("SRT-L1-H64-f0.5-s0", 0.4)], ignore_index=True)
    merged = sweep.merge_runs(earlier, latest)
    assert merged["trial_id"].unique().tolist() == [
        "SRT-L1-H16-f0.5-s0",
        "SRT-L1-H32-f0.5-s0",
        "SRT-L1-H64-f0.5-s0",
    ]
    assert merged.groupby("trial_id")["valid_ndcg@10"].max().tolist() == [0.1, 0.3, 0.4]  # latest wins


# --- end to end ---------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"}
    out = subprocess.run([*SWEEP, *args], capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


@pytest.mark.slow
def test_smoke_sweep_end_to_end_with_failing_trials_then_resume(tmp_path):
    """The smoke preset, narrowed to SRT widths {16, 32} (2 sizes x 2 fractions) to keep CI short."""
    broken, flaky = "SASRec-L1-H16-f0.1-s0", "SRT-L1-H16-f0.1-s0"
    common = ["--config", "smoke", "--storage", str(tmp_path), "--recbole.epochs=2", "--hidden_size=[16, 32]"]
    common += [f"--fail_trials={{{broken}: always, {flaky}: once}}"]
    log = _run(*common).stdout
    for name in (broken, flaky):
        assert f"[{name}] failed (attempt 1); retrying" in log
    assert f"[{broken}] ERROR" in log and f"[{flaky}] finished" in log
    out = tmp_path / "smoke"
    epochs, trials = pd.read_csv(out / "epochs.csv"), pd.read_csv(out / "trials.csv")
    for table in (epochs, trials):
        assert set(sweep.EPOCH_COLUMNS) <= set(table.columns)
    assert len(trials) == trials["trial_id"].nunique() == 8
    status = trials.set_index("trial_id")["status"]
    assert status[broken] == "ERROR" and (status.drop(broken) == "TERMINATED").all()
    assert "InjectedFailure" in trials.set_index("trial_id").loc[broken, "error"]

    ok = epochs[epochs["status"] != "ERROR"]
    assert len(ok) == 7 * 2 and (ok.groupby("trial_id")["is_best_epoch"].sum() == 1).all()
    assert (ok["flops"] > 0).all() and (ok["train_tokens"] > 0).all() and (ok["wall_time_s"] > 0).all()
    assert ok[["train_loss", "valid_loss", "valid_ndcg@10", "valid_recall@10"]].notna().all().all()
    assert ok.loc[ok["is_best_epoch"], ["test_ndcg@10", "test_recall@10"]].notna().all().all()
    assert ok.loc[~ok["is_best_epoch"], ["test_ndcg@10", "test_recall@10"]].isna().all().all()
    # The flaky trial resumed from its epoch-0 checkpoint: cumulative counters continue.
    resumed = ok[ok["trial_id"] == flaky].set_index("epoch")
    assert resumed.loc[1, "flops"] == 2 * resumed.loc[0, "flops"]
    assert resumed.loc[1, "train_tokens"] == 2 * resumed.loc[0, "train_tokens"]
    catalog = ok.groupby("model")["params_catalog"].first()
    assert catalog["SRT"] == 0 and catalog["SASRec"] > 0 and catalog["BERT4Rec"] > catalog["SASRec"]
    non_embedding = ok[ok["hidden_size"] == 16].groupby("model")["params_non_embedding"].first()
    assert non_embedding.nunique() == 1  # same transformer for the three models at the same size
    srt = ok[(ok["model"] == "SRT") & (ok["epoch"] == 0)].set_index(["hidden_size", "data_fraction"])
    assert srt.loc[(16, 0.2), "train_tokens"] > srt.loc[(16, 0.1), "train_tokens"]
    assert srt.loc[(32, 0.1), "flops"] > srt.loc[(16, 0.1), "flops"]
    summary = json.loads((out / "results.json").read_text())
    assert summary["status"] == {"TERMINATED": 7, "ERROR": 1}
    assert set(summary["best_per_model"]) == {"SRT", "SASRec", "BERT4Rec"}
    assert (out / "sweep_valid_ndcg.png").stat().st_size > 0
    assert pd.read_parquet(out / "epochs.parquet").shape == epochs.shape

    # Resume: finished trials are kept as they are; the errored one is tried again (and fails again).
    finished = (out / flaky / "progress.csv").read_text()
    log = _run(*common, "--resume").stdout
    assert f"[{broken}] ERROR" in log and f"[{flaky}]" not in log
    assert (out / flaky / "progress.csv").read_text() == finished
    again = pd.read_csv(out / "trials.csv")
    assert len(again) == 8 and (again["status"] == "ERROR").sum() == 1

    # On another machine only the results travel (committed): --resume keeps ended trials, runs the rest.
    for path in out.iterdir():
        if path.name != "epochs.csv":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    log = _run(*common, "--resume").stdout
    assert "kept 7 ended trials" in log and "sweep smoke: 1 trials" in log
    assert f"[{broken}] ERROR" in log and f"[{flaky}]" not in log
    moved = pd.read_csv(out / "epochs.csv")
    assert len(moved) == len(epochs) and (moved.groupby("trial_id")["status"].first() == status).all()
    kept, before = (table[table["trial_id"] == flaky].reset_index(drop=True) for table in (moved, epochs))
    pd.testing.assert_frame_equal(kept, before)
