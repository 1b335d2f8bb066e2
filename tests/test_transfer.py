"""Pre-train on one tiny catalog, fine-tune on another with different items: real RecBole runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_tiny_dataset
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import run_recbole

from recbole_srt.catalog import ItemFeatureError
from recbole_srt.checkpoint import load_srt_checkpoint
from recbole_srt.model.srt import ITEM_ID_TABLE
from recbole_srt.pipeline import run
from recbole_srt.serve import Recommender
from recbole_srt.transfer import TransferError, finetune, load_pretrained, main, plan_stages, transfer_config

ARCH = {"n_layers": 2}  # two blocks, so that top_k_layers and progressive leave something frozen


def write_other_catalog(root: Path) -> Path:
    """Dataset ``other``: 45 items (the source has 30), ids ``o<n>`` instead of ``i<n>``, other users."""
    folder = write_tiny_dataset(root, "other", n_users=30, n_items=45, seed=1)
    for name in ("other.inter", "other.item"):
        path = folder / name
        path.write_text(re.sub(r"(?m)(^|\t)i(\d+)\t", r"\1o\2\t", path.read_text()))
    return folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint of SRT trained 2 epochs on ``tiny``, data root that also holds ``other``)."""
    root = tmp_path_factory.mktemp("transfer")
    write_tiny_dataset(root)
    write_other_catalog(root)
    with pytest.MonkeyPatch.context() as patch:  # module fixtures run before conftest's sys.argv guard
        patch.setattr("sys.argv", ["pytest"])
        run_recbole(model="SRT", dataset="tiny", config_dict=tiny_config(root, epochs=2, **ARCH))
    (checkpoint,) = (root / "saved").glob("SRT-*.pth")
    return checkpoint, root


def target(checkpoint: Path, root: Path, **overrides):
    """The checkpoint's contents, ``other``'s fine-tuning config and its (train, valid, test) loaders."""
    saved = load_srt_checkpoint(checkpoint)
    config = transfer_config(saved["config"], "other", config_dict=tiny_config(root, **ARCH, **overrides))
    return saved, config, data_preparation(config, create_dataset(config))


def ndcg_at_10(model, test_data) -> float:
    """NDCG@10 recomputed by hand over the test loader RecBole evaluates (one target per row)."""
    gains = []
    with torch.no_grad():
        for interaction, history, _, positive_items in test_data:
            scores = model.full_sort_predict(interaction)
            if history is not None:  # RecBole masks the training history for non-sequential models only
                scores[history] = -math.inf
            ranks = (scores > scores.gather(1, positive_items.view(-1, 1))).sum(1)
            gains += [1 / math.log2(rank + 2) if rank < 10 else 0.0 for rank in ranks.tolist()]
    return float(np.mean(gains))


@pytest.mark.slow
def test_checkpoint_loads_into_a_different_catalog_zero_shots_and_trains(pretrained):
    checkpoint, root = pretrained
    result = finetune(checkpoint, "other", config_dict=tiny_config(root, epochs=2, **ARCH)).record

    saved, config, (train_data, _, test_data) = target(checkpoint, root)
    model = load_pretrained(saved["state_dict"], config, train_data._dataset).eval()
    assert model.n_items == 46 and saved["config"]["dataset"] == "tiny"  # 45 items + padding; source had 30
    assert set(result.zero_shot_test) == {"recall@10", "mrr@10", "ndcg@10", "hit@10"}
    assert result.zero_shot_test["ndcg@10"] == pytest.approx(ndcg_at_10(model, test_data), abs=1e-4)

    assert len(result.valid_curve) == 2 and [s.name for s in result.stages] == ["all"]
    tuned = load_srt_checkpoint(result.checkpoint)
    assert tuned["config"]["dataset"] == "other"
    assert tuned["state_dict"].keys() == saved["state_dict"].keys()  # no per-item tensor anywhere
    weight = "blocks.0.attn.qkv.weight"
    assert not torch.equal(tuned["state_dict"][weight], saved["state_dict"][weight])
    model.load_state_dict(tuned["state_dict"])
    assert result.test["ndcg@10"] == pytest.approx(ndcg_at_10(model, test_data), abs=1e-4)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "frozen", "trained"),
    [
        ("freeze_projection", ("item_tower.",), ("blocks.0.", "blocks.1.", "position_embedding.")),
        ("top_k_layers", ("item_tower.", "position_embedding.", "input_norm.", "blocks.0."), ("blocks.1.",)),
    ],
)
def test_frozen_parameters_get_no_gradient_and_stay_bit_identical(pretrained, strategy, frozen, trained):
    checkpoint, root = pretrained
    # weight decay would move a frozen parameter if the optimizer held it
    saved = load_srt_checkpoint(checkpoint)
    overrides = {"finetune_strategy": strategy, "epochs": 1, "weight_decay": 0.1}
    config = transfer_config(saved["config"], "other", config_dict=tiny_config(root, **ARCH, **overrides))
    before, grads = {}, {}

    def build(config, dataset):
        model = load_pretrained(saved["state_dict"], config, dataset)
        before.update(snapshot(model))
        return model

    def record_grads(result, stats):
        grads.update({name: p.grad is not None for name, p in result.model.named_parameters()})

    model = run(config, build_model=build, plan=plan_stages, saved=False, on_epoch=record_grads).model
    for name, param in model.named_parameters():
        if name.startswith(frozen):
            assert not grads[name], name
            assert torch.equal(param, before[name]), name
        if name.startswith(trained):
            assert grads[name], name
            assert not torch.equal(param, before[name]), name


def test_progressive_unfreezes_top_down_then_everything_within_the_budget():
    config = {
        "n_layers": 3,
        "item_id_embedding": "none",
        "finetune_strategy": "progressive",
        "epochs": 5,
        "progressive_epochs": 1,
        "learning_rate": 1e-3,
        "finetune_learning_rate": {"progressive": [3e-4, 3e-4, 2e-4, 1e-4]},
    }
    stages = plan_stages(config)
    assert [s.prefixes for s in stages] == [
        ("blocks.2.", "final_norm."),
        ("blocks.1.", "blocks.2.", "final_norm."),
        ("blocks.0.", "blocks.1.", "blocks.2.", "final_norm."),
        ("",),
    ]
    assert [s.epochs for s in stages] == [1, 1, 1, 2]
    assert [s.learning_rate for s in stages] == [3e-4, 3e-4, 2e-4, 1e-4]
    assert plan_stages({**config, "finetune_strategy": "full", "finetune_learning_rate": None})[0].epochs == 5
    with_ids = plan_stages({**config, "item_id_embedding": "add"})  # a new ID table trains in every stage
    assert [s.prefixes for s in with_ids] == [(*s.prefixes, "item_id_embedding.") for s in stages]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"finetune_strategy": "lora"}, "must be one of"),
        ({"finetune_strategy": "top_k_layers", "finetune_top_k": 4}, "finetune_top_k"),
        ({"finetune_strategy": "progressive", "epochs": 3}, "progressive needs epochs"),
        ({"finetune_strategy": "progressive", "finetune_learning_rate": {"progressive": [1e-3]}}, "4 rates"),
    ],
)
def test_bad_strategy_settings_are_clear_errors(overrides, message):
    config = {
        "n_layers": 3,
        "item_id_embedding": "none",
        "finetune_strategy": "full",
        "epochs": 5,
        "progressive_epochs": 1,
        "finetune_top_k": 1,
    }
    config |= {"learning_rate": 1e-3, "finetune_learning_rate": None, **overrides}
    with pytest.raises(TransferError, match=message):
        plan_stages(config)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"text_encoder": "sentence-transformers/all-mpnet-base-v2"}, "text_encoder"),
        ({"hidden_size": 32}, "hidden_size: checkpoint 16, requested 32"),
    ],
)
def test_changing_the_encoder_or_architecture_is_refused(pretrained, overrides, message):
    checkpoint, root = pretrained
    source = load_srt_checkpoint(checkpoint)["config"]
    with pytest.raises(TransferError, match=message):
        transfer_config(source, "other", config_dict=tiny_config(root, **ARCH, **overrides))


@pytest.mark.slow
def test_features_of_another_dimension_are_refused(pretrained, tmp_path):
    checkpoint, root = pretrained
    tokens = [line.split("\t")[0] for line in (root / "other" / "other.item").read_text().splitlines()[1:]]
    np.save(tmp_path / "feats.npy", np.random.default_rng(0).normal(size=(len(tokens), 12)))
    (tmp_path / "feats.ids").write_text("\n".join(tokens))
    with pytest.raises(ItemFeatureError, match="takes 384-dim features; other's item features: 12-dim"):
        finetune(
            checkpoint,
            "other",
            config_dict=tiny_config(root, **ARCH, item_feature_file=str(tmp_path / "feats.npy")),
        )


@pytest.mark.slow
def test_cli_runs_a_strategy_and_reports_errors(pretrained, capsys):
    checkpoint, root = pretrained
    overrides = [f"--{k}={v}" for k, v in tiny_config(root, **ARCH).items() if k != "load_col"]
    dataset_yaml = root / "other" / "other.yaml"
    argv = [f"--checkpoint={checkpoint}", "--dataset=other", f"--config_files={dataset_yaml}", *overrides]
    argv.append("--finetune_strategy=top_k_layers")
    assert main(argv) == 0
    assert "zero-shot test" in capsys.readouterr().out
    assert main([f"--checkpoint={root / 'other' / 'other.item'}", "--dataset=other"]) == 2
    assert "not a PyTorch checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_an_item_id_checkpoint_fine_tunes_with_a_new_table_and_serves_by_text(tmp_path, caplog):
    write_tiny_dataset(tmp_path)
    other = write_other_catalog(tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["pytest"])
        config = tiny_config(tmp_path, epochs=1, item_id_embedding="add", **ARCH)
        run_recbole(model="SRT", dataset="tiny", config_dict=config)
    (checkpoint,) = (tmp_path / "saved").glob("SRT-*.pth")
    saved = load_srt_checkpoint(checkpoint)  # read back and checked against the model its config builds
    assert saved["state_dict"][ITEM_ID_TABLE].shape[0] == 31  # tiny: 30 items + padding

    budget = tiny_config(tmp_path, epochs=1, finetune_strategy="top_k_layers", finetune_top_k=1, **ARCH)
    result = finetune(checkpoint, "other", config_dict=budget).record
    assert result.stages[0].prefixes[-1] == "item_id_embedding."
    tuned = load_srt_checkpoint(result.checkpoint)
    assert tuned["config"]["item_id_embedding"] == "add"
    table = tuned["state_dict"][ITEM_ID_TABLE]
    assert table.shape[0] == 46 and table[1:].abs().sum() > 0  # other's own table (started at 0), trained

    with caplog.at_level("WARNING"):
        recommender = Recommender.from_checkpoint(checkpoint, other / "other.item")
    assert "scored by their text alone" in caplog.text
    recommender.add_items({"new": "a brand new item"})  # a catalog longer than any table: still text alone
    assert len(recommender.recommend(["o1", "o2"], k=50)) == 45 + 1 - 2  # every item but the history
