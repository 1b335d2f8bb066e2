"""The compatibility layer: each patch has a test that fails without it (most show so by undoing it)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import recbole.data.dataset.dataset as recbole_dataset
import recbole.quick_start.quick_start as recbole_quick_start
import recbole.trainer.hyper_tuning as recbole_hyper_tuning
import torch
from conftest import tiny_config, write_tiny_dataset
from dataset_digest import MAGAZINE, convert_magazine, digest, load
from packaging.version import Version
from recbole.config import Config
from recbole.data import create_dataset
from recbole.data.dataset import Dataset

from recbole_srt import compat
from recbole_srt.checkpoint import FORMAT, CheckpointError
from recbole_srt.compat import ignoring_argv
from recbole_srt.stack import IncompatibleStackError, check_stack

REFERENCE = json.loads((Path(__file__).parent / "data" / "compat" / "reference.json").read_text())


def versions_with(**overrides):
    def version(dist: str) -> str:
        if overrides.get(dist, "") is None:
            raise importlib.metadata.PackageNotFoundError(dist)
        return overrides.get(dist) or importlib.metadata.version(dist)

    return version


def test_installed_stack_passes():
    check_stack()


def test_the_suite_runs_on_todays_stack():
    """What CI installs: numpy 2, pandas 3 and Ray's dict-taking tune.report (2.41+)."""
    installed = {dist: Version(importlib.metadata.version(dist)) for dist in ("numpy", "pandas", "ray")}
    assert installed["numpy"].major >= 2 and installed["pandas"].major >= 3, installed
    assert installed["ray"] >= Version("2.41"), installed


def test_missing_recbole_says_how_to_install_it():
    with pytest.raises(
        IncompatibleStackError, match=r"not installed; .*pip install --no-deps recbole==1\.2\.1"
    ):
        check_stack(versions_with(recbole=None))


def test_recbole_other_than_the_patched_version_is_refused():
    with pytest.raises(
        IncompatibleStackError, match=r"recbole==1\.3\.0 is installed; fix: pip install --no-deps"
    ):
        check_stack(versions_with(recbole="1.3.0"))


@pytest.fixture(scope="module")
def magazine_yaml(tmp_path_factory) -> Path:
    return convert_magazine(tmp_path_factory.mktemp("digest"))


@pytest.mark.parametrize("case", ["ml-100k", "magazine", "magazine-holes"])
def test_loaded_data_is_what_recbole_loaded_on_numpy1_pandas2(case, magazine_yaml, monkeypatch):
    """Every id, value and token RecBole loads equals what RecBole 1.2.1 loaded, unpatched, on numpy 1.26.4
    and pandas 2.3.3 (tests/data/compat/reference.json, made by tests/dataset_digest.py)."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    files = {p.name: p for p in magazine_yaml.parent.glob(f"{MAGAZINE}.i*")}
    assert {name: compat_hash(path) for name, path in files.items()} == REFERENCE["converted-files"]
    got, expected = digest(load(case, magazine_yaml)), REFERENCE[case]
    assert [key for key in expected if got.get(key) != expected[key]] == [] and set(got) == set(expected)


def compat_hash(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_without_the_fill_patches_pandas3_crashes_or_corrupts(magazine_yaml, monkeypatch):
    """RecBole's own fills are no-ops under Copy-on-Write: an empty text cell crashes loading, and a
    missing item row's tokens are corrupted (-2**63)."""
    monkeypatch.setattr(recbole_dataset, "pd", pd)
    with pytest.raises(AttributeError, match="'float' object has no attribute 'split'"):
        load("magazine", magazine_yaml)
    monkeypatch.undo()
    monkeypatch.setattr(Dataset, "_fill_nan", compat._recbole_fill_nan)
    holes = load("magazine-holes", magazine_yaml)
    assert holes.item_feat["brand"].isna().any()  # an Interaction makes it -2**63


def test_loading_sequence_fields_prints_no_pandas_warning(tmp_path):
    """RecBole's no-op ``fillna(inplace=True)`` on each sequence column makes pandas 3 warn on every load."""
    write_tiny_dataset(tmp_path)
    config = Config(model="SRT", dataset="tiny", config_dict=tiny_config(tmp_path, load_col=None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", append=True)  # behind the filters in force (the layer's among them)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # pandas 4's inplace deprecations
        create_dataset(config)
    assert [str(w.message) for w in caught] == []


def test_missing_values_survive_dataset_loading(tmp_path):
    """pandas 3 would turn a missing token into -2**63 and leave a missing float NaN (silent corruption)."""
    folder = write_tiny_dataset(tmp_path)
    item = folder / "tiny.item"
    lines = item.read_text().splitlines()
    lines[1] = "i0\tsome title\t\t"  # empty brand (token) and price (float)
    item.write_text("\n".join(lines) + "\n")
    config = Config(
        model="SRT",
        dataset="tiny",
        config_dict=tiny_config(
            tmp_path,
            load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "brand", "price"]},
        ),
    )
    dataset = create_dataset(config)
    brand = np.asarray(dataset.item_feat["brand"])
    price = np.asarray(dataset.item_feat["price"], dtype=float)
    assert brand.min() >= 0 and np.isfinite(price).all()
    row = list(dataset.field2id_token["item_id"]).index("i0")
    assert brand[row] == 0  # RecBole's padding token for "missing"
    prices = [float(line.split("\t")[3]) for line in lines[2:]]
    assert price[row] == pytest.approx(np.mean(prices))  # a missing float is the field's mean


def test_recboles_series_agg_keeps_its_pandas2_meaning(monkeypatch):
    """RecBole splits sequence fields by ``feat[field].agg(len)``; pandas 3 gives the column's length."""
    cells = pd.Series([np.array([1, 2]), np.array([3]), np.array([4, 5, 6])])
    recbole_like = {"__name__": "recbole.data.dataset.dataset", "cells": cells, "np": np}
    assert list(eval("cells.agg(len)", recbole_like)) == [2, 1, 3]  # noqa: S307  (test-written code)
    assert list(eval("cells.agg(np.concatenate)", recbole_like)) == [1, 2, 3, 4, 5, 6]  # noqa: S307
    assert cells.agg(len) == 3  # everyone else: pandas' own meaning
    monkeypatch.setattr(pd.Series, "agg", compat._series_agg)
    assert eval("cells.agg(len)", recbole_like) == 3  # noqa: S307  (unpatched: every split is wrong)


def test_tensors_own_their_memory_and_torch_does_not_warn(tmp_path, monkeypatch):
    write_tiny_dataset(tmp_path)
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tmp_path))
    frame = pd.DataFrame({"user_id": np.arange(3), "rating": np.ones(3)})
    dataset = create_dataset(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interaction = dataset._dataframe_to_interaction(frame)
    interaction["user_id"][0] = 7
    assert frame["user_id"][0] == 0
    monkeypatch.setattr(Dataset, "_dataframe_to_interaction", compat._recbole_dataframe_to_interaction)
    with pytest.warns(UserWarning, match="not writable"):
        dataset._dataframe_to_interaction(pd.DataFrame({"user_id": np.arange(3)}))


_NDCG_WITHOUT_A_CONFIG = """
import numpy as np
{setup}
from recbole.evaluator.metrics import NDCG
ndcg = NDCG({{"topk": [10], "metric_decimal_place": 4}})
print(ndcg.metric_info(np.ones((2, 10), bool), np.ones(2, int))[0, -1])
"""


def test_recbole_metrics_work_without_constructing_a_config():
    """As after load_data_and_model in a fresh process: RecBole's NDCG needs np.float."""
    bare = subprocess.run(
        [sys.executable, "-c", _NDCG_WITHOUT_A_CONFIG.format(setup="")], capture_output=True, text=True
    )
    assert bare.returncode != 0 and "has no attribute 'float'" in bare.stderr
    shimmed = subprocess.run(
        [sys.executable, "-c", _NDCG_WITHOUT_A_CONFIG.format(setup="import recbole_srt")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(shimmed.stdout) > 0


def test_recboles_own_alias_setup_fails_on_numpy2_and_the_patch_does_not(monkeypatch):
    with pytest.raises(AttributeError, match="np.float_` was removed in the NumPy 2.0 release"):
        compat._recbole_compatibility_settings(None)
    Config.compatibility_settings(None)
    assert np.float is np.float64 and np.unicode is np.str_  # type: ignore[attr-defined]


def test_objective_functions_keyword_report_reaches_todays_tune(monkeypatch):
    """RecBole's objective_function calls ``tune.report(**result)``; Ray >= 2.7 takes one dict (the call
    fails its signature inside a trial; outside one Ray returns before checking it)."""
    from ray import tune

    with pytest.raises(TypeError):
        tune.report.__wrapped__(**{"ndcg@10": 0.1})
    reported = []
    monkeypatch.setattr(tune, "report", lambda *args, **kwargs: reported.append((args, kwargs)))
    recbole_quick_start.tune.report(**{"ndcg@10": 0.1})
    assert reported == [(({"ndcg@10": 0.1},), {})]


def test_recboles_exhaustive_search_runs_on_todays_hyperopt(tmp_path, monkeypatch):
    pytest.importorskip("hyperopt")
    from recbole.trainer import HyperTuning

    seen = []

    def objective(config_dict, config_file_list, saved=True):
        seen.append((config_dict["learning_rate"], config_dict["hidden_size"]))
        score = config_dict["learning_rate"] * config_dict["hidden_size"]
        return {"model": "toy", "best_valid_score": score, "valid_score_bigger": True,
                "best_valid_result": {"score": score}, "test_result": {"score": score}}  # fmt: skip

    space = {"learning_rate": [0.01, 0.001], "hidden_size": [16, 32]}
    tuning = HyperTuning(
        objective, algo="exhaustive", params_dict={"choice": space}, fixed_config_file_list=[]
    )
    tuning.run()
    assert sorted(seen) == sorted((lr, h) for lr in space["learning_rate"] for h in space["hidden_size"])
    assert tuning.best_params == {"learning_rate": 0.01, "hidden_size": 32}
    monkeypatch.setattr(recbole_hyper_tuning, "np", np)
    unpatched = HyperTuning(
        objective, algo="exhaustive", params_dict={"choice": space}, fixed_config_file_list=[]
    )
    with pytest.raises(AttributeError, match="integers"):
        unpatched.run()


def test_sequential_ce_models_run_with_recbole_defaults(tmp_path):
    """RecBole 1.2.1 rejects its own SASRec/BERT4Rec defaults (CE + uniform train negatives)."""
    write_tiny_dataset(tmp_path)
    for model in ("SASRec", "BERT4Rec"):
        config = Config(model=model, dataset="tiny", config_dict={"data_path": str(tmp_path)})
        assert config["train_neg_sample_args"]["distribution"] == "none"


def test_explicit_negative_sampling_with_ce_is_still_refused(tmp_path):
    write_tiny_dataset(tmp_path)
    explicit = {
        "data_path": str(tmp_path),
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
    }
    with pytest.raises(ValueError, match="should be None when the loss_type is CE"):
        Config(model="SASRec", dataset="tiny", config_dict=explicit)


def test_config_reads_argv_only_outside_the_pipelines_scope(tmp_path, monkeypatch):
    write_tiny_dataset(tmp_path)
    monkeypatch.setattr(sys, "argv", ["prog", "--epochs=7"])
    assert Config(model="SRT", dataset="tiny", config_dict={"data_path": str(tmp_path)})["epochs"] == 7
    with ignoring_argv():
        assert Config(model="SRT", dataset="tiny", config_dict={"data_path": str(tmp_path)})["epochs"] != 7


def test_config_strings_are_parsed_as_literals_never_run(tmp_path):
    write_tiny_dataset(tmp_path)
    code = "__import__('os').getpid()"
    config = Config(
        model="SRT",
        dataset="tiny",
        config_dict={
            "data_path": str(tmp_path),
            "text_fields": code,
            "topk": "[5, 10]",
            "norm_first": "false",
        },
    )
    assert config["text_fields"] == code  # RecBole's eval() would have run it and stored a pid
    assert config["topk"] == [5, 10] and config["norm_first"] is False


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: the code a crafted checkpoint can hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def _sasrec_trainer(tmp_path):
    from recbole.trainer import Trainer
    from recbole.utils import get_model

    write_tiny_dataset(tmp_path)
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tmp_path))
    dataset = create_dataset(config)
    return Trainer(config, get_model("SASRec")(config, dataset))


def test_recboles_own_trainer_writes_weights_only_and_nothing_is_unpickled(tmp_path):
    """RecBole's own Trainer (SASRec) writes SRT's weights-only format and reloads it; a full pickle from
    anywhere else is refused unread."""
    trainer = _sasrec_trainer(tmp_path)
    written = tmp_path / "sasrec.pth"
    trainer._save_checkpoint(3, verbose=False, saved_model_file=str(written))
    assert torch.load(written, weights_only=True)["format"] == FORMAT
    trainer.resume_checkpoint(written)
    assert trainer.start_epoch == 4

    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.pth"
    torch.save({"config": _Payload(marker), "state_dict": {}}, crafted)
    with pytest.raises(CheckpointError, match=r"crafted\.pth: a full-pickle checkpoint .*not read"):
        trainer.resume_checkpoint(crafted)
    from recbole.quick_start import load_data_and_model

    with pytest.raises(CheckpointError, match="a full-pickle checkpoint"):
        load_data_and_model(str(crafted))
    assert not marker.exists()


def test_a_config_the_safe_format_cannot_hold_is_read_back_from_memory_never_unpickled(tmp_path, monkeypatch):
    """A config value that is no plain value (here an object a user put in config_dict) is written in
    RecBole's own format; this process reads back its in-memory copy, and the file is never unpickled,
    even by the process that wrote it."""
    trainer = _sasrec_trainer(tmp_path)
    trainer.config.final_config_dict["a_user_object"] = _Payload(tmp_path / "never")
    written = tmp_path / "sasrec.pth"
    trainer._save_checkpoint(3, verbose=False, saved_model_file=str(written))
    monkeypatch.setattr(compat, "_torch_load", lambda *a, **k: pytest.fail("the file was unpickled"))
    trainer.resume_checkpoint(written)
    assert trainer.start_epoch == 4 and not (tmp_path / "never").exists()
    monkeypatch.undo()
    written.write_bytes(written.read_bytes())  # rewritten by someone else: not ours now
    with pytest.raises(CheckpointError, match="a full-pickle checkpoint"):
        trainer.resume_checkpoint(written)


def test_torchs_safe_default_holds_outside_recboles_loaders(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"config": Config.__new__(Config), "state_dict": {}}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path)
