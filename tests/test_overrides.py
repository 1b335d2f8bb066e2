"""The one override parser: RecBole's --key=value, YAML values, typos refused with the closest keys."""

from __future__ import annotations

import pytest

from recbole_srt.overrides import OverrideError, apply_overrides, known_config_keys, parse_overrides


def test_values_are_yaml_and_keys_must_be_known():
    known = known_config_keys()
    assert {"epochs", "hidden_size", "neg_sample_num", "finetune_strategy", "load_col", "local_rank"} <= known
    parsed = parse_overrides(
        ["--epochs=3", "--topk=[10, 20]", "--train_neg_sample_args=~", "--lr_x=a"], known | {"lr_x"}
    )
    assert parsed == {"epochs": 3, "topk": [10, 20], "train_neg_sample_args": None, "lr_x": "a"}


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--hiden_size=64", "unknown setting 'hiden_size'; did you mean hidden_size"),
        ("--zzzzzz=1", "unknown setting 'zzzzzz'$"),
        ("epochs=3", "settings are given as --key=value"),
        ("--epochs", "settings are given as --key=value"),
        ("--topk=[1", "not valid YAML"),
    ],
)
def test_bad_overrides_are_clear_errors(arg, message):
    with pytest.raises(OverrideError, match=message):
        parse_overrides([arg], known_config_keys())


def test_a_users_config_file_keys_are_known(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("my_custom_key: 1\n")
    assert parse_overrides(["--my_custom_key=2"], known_config_keys([extra])) == {"my_custom_key": 2}


def test_dotted_keys_reach_nested_mappings():
    target = {"recbole": {"epochs": 1, "topk": [10]}, "gpu": 0}
    apply_overrides(target, parse_overrides(["--recbole.epochs=5", "--gpu=0.5"], {"recbole", "gpu"}))
    assert target == {"recbole": {"epochs": 5, "topk": [10]}, "gpu": 0.5}
    with pytest.raises(OverrideError, match="gpu is not a mapping"):
        apply_overrides(target, {"gpu.x": 1})
