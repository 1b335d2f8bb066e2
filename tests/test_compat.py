"""The compatibility layer: each shim or pin has a test that fails without it."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_tiny_dataset
from recbole.config import Config
from recbole.data import create_dataset

from recbole_srt import compat
from recbole_srt.checkpoint import FORMAT, CheckpointError
from recbole_srt.compat import IncompatibleStackError, check_stack, ignoring_argv


def versions_with(**overrides):
    return lambda dist: overrides.get(dist, importlib.metadata.version(dist))


def test_installed_stack_passes():
    check_stack()


@pytest.mark.parametrize(
    ("dist", "version"),
    [("pandas", "3.0.0"), ("numpy", "2.1.0"), ("setuptools", "82.0.0"), ("pyarrow", "26.0.0")],
)
def test_stack_known_to_break_recbole_is_refused(dist, version):
    with pytest.raises(IncompatibleStackError, match=rf"(?s){dist}=={version}: .*pip install '{dist}<"):
        check_stack(versions_with(**{dist: version}))


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


def test_pinned_stack_imports_ray_tune_and_pyarrow():
    """numpy<2 (ray's np.bool8), setuptools<82 (ray's pkg_resources), pyarrow<26 (numpy 2 only)."""
    import pyarrow
    from ray.tune.logger import tensorboardx  # noqa: F401

    assert pyarrow.array([1, 2]).to_numpy().sum() == 3


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


def test_recbole_other_than_the_patched_version_is_refused():
    with pytest.raises(IncompatibleStackError, match=r"(?s)recbole==1\.3\.0: .*pip install recbole==1\.2\.1"):
        check_stack(versions_with(recbole="1.3.0"))


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
