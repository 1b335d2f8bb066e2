"""Serving a trained SRT over a catalog with new items: a real checkpoint, real text encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, write_tiny_dataset
from recbole.config import Config
from recbole.quick_start import run_recbole

from recbole_srt.catalog import ItemFeatureError, read_catalog, read_item_texts
from recbole_srt.checkpoint import FORMAT, CheckpointError, encode_config
from recbole_srt.serve import Recommender, ServeError, main

FAVOURITE = "i7"
HISTORY = ["i1", "i2", "i3"]


def write_favourite_dataset(root: Path) -> Path:
    """Dataset ``fav``: after every other item, each user goes back to ``FAVOURITE``."""
    folder = write_tiny_dataset(root, "fav")
    header, *rows = (folder / "fav.inter").read_text().splitlines()
    lines = [header]
    for user, item, rating, time in (row.split("\t") for row in rows):
        if item != FAVOURITE:
            t = 2 * float(time)
            lines += [f"{user}\t{item}\t{rating}\t{t}", f"{user}\t{FAVOURITE}\t5\t{t + 1}"]
    (folder / "fav.inter").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint of SRT trained on ``fav``, its ``.item`` file)."""
    root = tmp_path_factory.mktemp("serve")
    folder = write_favourite_dataset(root)
    with pytest.MonkeyPatch.context() as patch:  # module fixtures run before conftest's sys.argv guard
        patch.setattr("sys.argv", ["pytest"])
        # prefix rows: 4 epochs of whole-sequence rows on 40 users would be 4 optimiser steps
        config = tiny_config(root, epochs=4, learning_rate=0.01, train_rows="prefixes")
        run_recbole(model="SRT", dataset="fav", config_dict=config)
    (checkpoint,) = (root / "saved").glob("SRT-*.pth")
    return checkpoint, folder / "fav.item"


def catalog_with_twin(item_file: Path, folder: Path) -> Path:
    """A copy of ``item_file`` plus item ``new`` whose row is ``FAVOURITE``'s, id aside."""
    lines = item_file.read_text().splitlines()
    (favourite,) = [line for line in lines if line.startswith(f"{FAVOURITE}\t")]
    catalog = folder / "catalog.item"
    catalog.write_text("\n".join([*lines, "new" + favourite.removeprefix(FAVOURITE)]) + "\n")
    return catalog


@pytest.mark.slow
def test_a_new_item_with_the_favourites_text_ranks_with_it(trained, tmp_path):
    checkpoint, item_file = trained
    recommender = Recommender.from_checkpoint(checkpoint, catalog_with_twin(item_file, tmp_path))
    top = dict(recommender.recommend(HISTORY, k=3))
    assert FAVOURITE in top and "new" in top  # never trained on, recommendable from its text alone
    assert top["new"] == pytest.approx(top[FAVOURITE], abs=1e-5)  # same text, same features, same score
    assert len(recommender.item_ids) == 31 and not set(HISTORY) & set(top)


@pytest.mark.slow
def test_add_items_makes_an_item_recommendable_without_retraining(trained):
    checkpoint, item_file = trained
    recommender = Recommender.from_checkpoint(checkpoint, item_file)
    weights = {k: v.clone() for k, v in recommender.model.state_dict().items()}
    text = recommender.texts[recommender.item_ids.index(FAVOURITE)]
    recommender.add_items({"late": text, "other": "a completely unrelated garden hose"})
    top = dict(recommender.recommend(HISTORY, k=3))
    assert "late" in top and top["late"] == pytest.approx(top[FAVOURITE], rel=1e-3)
    assert all(torch.equal(v, weights[k]) for k, v in recommender.model.state_dict().items())
    with pytest.raises(ServeError, match="already in the catalog"):
        recommender.add_items({"late": text})
    revisit = [FAVOURITE, *HISTORY]
    assert FAVOURITE not in dict(recommender.recommend(revisit, k=3))
    assert FAVOURITE in dict(recommender.recommend(revisit, k=3, exclude_history=False))


@pytest.mark.slow
def test_bad_histories_are_clear_errors(trained):
    checkpoint, item_file = trained
    recommender = Recommender.from_checkpoint(checkpoint, item_file)
    with pytest.raises(ServeError, match="history is empty"):
        recommender.recommend([])
    with pytest.raises(ServeError, match=r"2 history items are not in the catalog: \['nope', 'gone'\]"):
        recommender.recommend(["i1", "nope", "gone"])


def test_wrong_checkpoints_are_clear_errors(tmp_path):
    garbage, sasrec = tmp_path / "garbage.pth", tmp_path / "sasrec.pth"
    garbage.write_bytes(b"not a checkpoint")
    values, types = encode_config(
        Config(model="SASRec", dataset="tiny", config_dict={"data_path": str(tmp_path)})
    )
    torch.save({"format": FORMAT, "config": values, "config_types": types, "config_parameters": {},
                "state_dict": {}}, sasrec)  # fmt: skip
    cases = [(tmp_path / "missing.pth", "no such checkpoint"), (garbage, "not a PyTorch checkpoint")]
    cases += [(sasrec, "a SASRec checkpoint; only SRT")]
    for path, message in cases:
        with pytest.raises(CheckpointError, match=message):
            Recommender.from_checkpoint(path, tmp_path / "unused.item")


def test_jsonl_and_tsv_catalogs_compose_text_like_item_files(tmp_path):
    item_file = write_tiny_dataset(tmp_path) / "tiny.item"
    expected = read_item_texts(item_file, "item_id", ["title", "brand"])
    rows = [
        dict(zip(["item_id", "title", "brand"], line.split("\t")[:3], strict=True))
        for line in item_file.read_text().splitlines()[1:4]
    ]
    rows[1]["brand"] = ""  # an empty field is skipped, as in .item files
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    (tmp_path / "c.tsv").write_text("\n".join(["id\ttitle\tbrand", *("\t".join(r.values()) for r in rows)]))
    for name in ("c.jsonl", "c.tsv"):
        catalog = read_catalog(tmp_path / name)
        assert catalog.tokens == expected.tokens[:3]
        assert catalog.texts[0] == expected.texts[0] == f"{rows[0]['title']}. {rows[0]['brand']}"
        assert catalog.texts[1] == rows[1]["title"]
    (tmp_path / "c.csv").write_text("x")
    with pytest.raises(ItemFeatureError, match="a catalog is a .item, .jsonl or .tsv file"):
        read_catalog(tmp_path / "c.csv")


@pytest.mark.slow
def test_cli_prints_json_or_a_table_and_reports_errors(trained, capsys):
    checkpoint, item_file = trained
    text = "black microscope slide model 7"
    common = [f"--checkpoint={checkpoint}", f"--catalog={item_file}", "--history", *HISTORY]
    assert main([*common, "-k", "3", "--new-item", "brand-new", text, "--json"]) == 0
    top = json.loads(capsys.readouterr().out)
    assert len(top) == 3 and {"item_id", "score", "text"} <= top[0].keys()
    assert main([*common, "-k", "2"]) == 0
    assert FAVOURITE in capsys.readouterr().out.splitlines()[1]
    assert main([f"--checkpoint={checkpoint}", f"--catalog={item_file}", "--history", "i1", "nope"]) == 2
    assert "not in the catalog: ['nope']" in capsys.readouterr().err
