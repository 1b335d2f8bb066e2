"""SRT is found by name wherever RecBole looks a model up, with its YAML defaults in RecBole's order."""

from __future__ import annotations

import subprocess
import sys

from conftest import write_tiny_dataset
from recbole.config import Config
from recbole.utils import ModelType, get_model, get_trainer

from recbole_srt import SRT, SRTTrainer


def test_get_model_finds_srt_and_get_trainer_its_trainer():
    assert get_model("SRT") is SRT
    assert get_trainer(ModelType.SEQUENTIAL, "SRT") is SRTTrainer
    assert get_trainer(ModelType.SEQUENTIAL, "SASRec").__name__ == "Trainer"  # RecBole's own, untouched


def test_import_alone_registers_in_a_fresh_process():
    code = "import recbole_srt; from recbole.utils import get_model; print(get_model('SRT').__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "recbole_srt.model.srt"


def test_plugin_yaml_sits_between_overall_and_user_settings(tmp_path):
    write_tiny_dataset(tmp_path)
    base = {"data_path": str(tmp_path)}
    config = Config(model="SRT", dataset="tiny", config_dict=base)
    assert config["neg_sample_num"] == 256 and config["text_encoder"].endswith("all-MiniLM-L6-v2")
    assert config["epochs"] != 300  # the plugin YAML overrides overall.yaml
    assert config["MAX_ITEM_LIST_LENGTH"] == 50  # untouched RecBole dataset default

    user = Config(model="SRT", dataset="tiny", config_dict={**base, "epochs": 3, "neg_sample_num": 9})
    assert user["epochs"] == 3 and user["neg_sample_num"] == 9


def test_dataset_and_quick_start_settings_outrank_the_plugin_yaml():
    config = Config(model="SRT", dataset="ml-100k")
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"}  # RecBole's sequential preset
    assert config["load_col"]["inter"] == ["user_id", "item_id", "rating", "timestamp"]  # ml-100k.yaml


def test_builtin_models_are_unaffected(tmp_path):
    write_tiny_dataset(tmp_path)
    config = Config(model="SASRec", dataset="tiny", config_dict={"data_path": str(tmp_path)})
    assert "neg_sample_num" not in config and config["epochs"] == 300
