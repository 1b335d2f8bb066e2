"""Real training through the ``run_recbole`` console command, then reloading the checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, write_tiny_dataset
from recbole.config import Config
from recbole.quick_start import load_data_and_model, objective_function
from recbole.utils import ModelType

from recbole_srt import SRT, Recommender
from recbole_srt.checkpoint import load_srt_checkpoint
from recbole_srt.cli import main, parse_args, quiet_library_warnings

RUN_RECBOLE = shutil.which("run_recbole") or str(Path(sys.executable).with_name("run_recbole"))
TINY = [
    "--dataset=tiny",
    "--epochs=1",
    "--hidden_size=16",
    "--inner_size=32",
    "--n_layers=1",
    "--MAX_ITEM_LIST_LENGTH=10",
    "--train_batch_size=64",
    "--show_progress=False",
]


def run_console(tmp_path: Path, *args: str) -> str:
    out = subprocess.run(
        [RUN_RECBOLE, f"--data_path={tmp_path}", f"--checkpoint_dir={tmp_path / 'saved'}", *TINY, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


@pytest.mark.slow
def test_srt_trains_one_epoch_and_its_checkpoint_reloads(tmp_path, monkeypatch):
    # RecBole's default place (dataset/<name> in the working folder): load_data_and_model reads the data
    # there, since a checkpoint carries no paths
    folder = write_tiny_dataset(tmp_path / "dataset")
    log = run_console(
        tmp_path, "--model=SRT", f"--config_files={folder / 'tiny.yaml'}", "--data_path=dataset"
    )
    assert "test result" in log and "ndcg@10" in log

    (checkpoint,) = (tmp_path / "saved").glob("SRT-*.pth")
    raw = torch.load(checkpoint, weights_only=True)  # SRT's format: nothing to unpickle but weights
    assert json.loads(json.dumps(raw["config"]))["hidden_size"] == 16  # the config is plain JSON
    assert not {"data_path", "checkpoint_dir", "feature_cache_dir"} & raw["config"].keys()  # no places
    monkeypatch.chdir(tmp_path)
    config, model, dataset, _, _, test_data = load_data_and_model(str(checkpoint))
    assert isinstance(model, SRT) and config["hidden_size"] == 16 and isinstance(config, Config)
    assert config["device"] == torch.device("cpu") and config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    saved = raw["state_dict"]
    assert "item_features" not in saved
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name])
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        scores = model.eval().full_sort_predict(batch)
    assert scores.shape == (len(batch), dataset.item_num)


@pytest.mark.slow
def test_builtin_sasrec_runs_through_the_same_command(tmp_path):
    folder = write_tiny_dataset(tmp_path)
    log = run_console(tmp_path, "--model=SASRec", f"--config_files={folder / 'tiny.yaml'}")
    assert "test result" in log


def test_cli_accepts_recbole_arguments_and_leaves_settings_to_the_override_parser():
    argv = ["--model=SASRec", "--dataset", "x", "--config_files=a.yaml b.yaml", "--epochs=3"]
    args, rest = parse_args(argv)
    assert (args.model, args.dataset, args.config_files, args.nproc) == ("SASRec", "x", "a.yaml b.yaml", 1)
    assert rest == ["--epochs=3"]
    assert parse_args([])[0].model == "SRT" and parse_args([])[0].dataset == "ml-100k"


def test_cli_refuses_a_mistyped_setting_in_one_line(capsys):
    assert main(["--dataset=ml-100k", "--epoch=3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "run_recbole: error: unknown setting 'epoch'; did you mean epochs?"


@pytest.mark.slow
def test_recbole_objective_function_trains_srt_by_name(tmp_path):
    write_tiny_dataset(tmp_path)
    result = objective_function(
        config_dict={"model": "SRT", "dataset": "tiny", **tiny_config(tmp_path)}, saved=False
    )
    assert set(result["test_result"]) >= {"ndcg@10", "recall@10"}
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


@pytest.mark.parametrize(
    ("message", "category", "module", "silenced"),
    [
        (
            "`torch.cuda.amp.GradScaler(args...)` is deprecated.",
            FutureWarning,
            "recbole.trainer.trainer",
            True,
        ),
        ("`torch.cuda.amp.GradScaler(args...)` is deprecated.", FutureWarning, "my_own_code", False),
        ("something else", FutureWarning, "recbole.trainer.trainer", False),
    ],
)
def test_cli_silences_exactly_recboles_known_harmless_warnings(message, category, module, silenced):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        quiet_library_warnings()
        warnings.warn_explicit(message, category, "file.py", 1, module=module)
    assert (not caught) == silenced


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_training_on_cpu_finishes_and_its_checkpoint_reloads(tmp_path):
    folder = write_tiny_dataset(tmp_path, n_users=60)
    ddp = ["--nproc=2", f"--port={_free_port()}", "--epochs=2", "--train_batch_size=32"]
    log = run_console(tmp_path, "--model=SRT", f"--config_files={folder / 'tiny.yaml'}", *ddp)
    assert "test result" in log and log.count("checkpoint: ") == 1  # rank 0 reports
    (checkpoint,) = (tmp_path / "saved").glob("SRT-*.pth")
    recommender = Recommender.from_checkpoint(checkpoint, folder / "tiny.item")
    config = load_srt_checkpoint(checkpoint)["config"]
    assert config["world_size"] == 2 and not config["single_spec"] and config["device"].type == "cpu"
    assert len(recommender.recommend(["i1", "i2"], k=5)) == 5
