"""Named recipes: loaded right above SRT.yaml, below the dataset's YAML and the user's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_training import RUN_RECBOLE

from recbole_srt.compat import UnknownRecipeError
from recbole_srt.pipeline import make_config

RECIPES = Path(__file__).resolve().parents[1] / "properties" / "recipes"


def test_recipes_sit_between_the_model_yaml_and_the_users_settings():
    paper = make_config("SRT", "ml-100k", config_dict={"recipe": "srt-paper"})
    assert (paper["loss_type"], paper["negatives"], paper["lr_scheduler"], paper["learning_rate"]) == (
        "SSM", "example", "onecycle", 0.0001,
    )  # fmt: skip
    mine = make_config("SRT", "ml-100k", config_dict={"recipe": "srt-paper", "learning_rate": 0.01})
    assert mine["learning_rate"] == 0.01 and mine["loss_type"] == "SSM"
    zhang = make_config("SRT", "ml-100k", argv=["--recipe=zhang"])
    assert zhang["optimizer_switch"]["learner"] == "sgd" and zhang["hidden_dropout_prob"] == {
        "first": 0.5,
        "last": 0.1,
    }
    assert make_config("SRT", "ml-100k")["recipe"] is None


def test_every_recipe_key_is_a_known_srt_or_recbole_setting():
    from recbole_srt.overrides import known_config_keys

    known = known_config_keys()
    for path in RECIPES.glob("*.yaml"):
        assert set(yaml.safe_load(path.read_text())) <= known, path.name


def test_an_unknown_recipe_names_the_shipped_ones():
    with pytest.raises(
        UnknownRecipeError, match=r"no recipe 'srt'; shipped recipes: \['srt-paper', 'tuned', 'zhang'\]"
    ):
        make_config("SRT", "ml-100k", config_dict={"recipe": "srt"})


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_each_recipe_trains_an_epoch_on_ml_100k_from_run_recbole(recipe, tmp_path):
    import subprocess

    small = ["--epochs=1", "--MAX_ITEM_LIST_LENGTH=10", "--hidden_size=16", "--inner_size=32", "--n_heads=2"]
    out = subprocess.run(
        [RUN_RECBOLE, "--model=SRT", f"--recipe={recipe}", f"--checkpoint_dir={tmp_path}", *small],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "test result" in out.stdout and '"ndcg@10"' in out.stdout
