"""import-unisrec: RecBole's leave-one-out split of the output reproduces UniSRec's valid/test exactly."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from dataset_prep.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # RecBole's own pandas fillna warnings


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def read_index(path: Path) -> list[str]:
    pairs = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    return [token for token, _ in sorted(pairs, key=lambda p: int(p[1]))]


def read_split(path: Path, users: list[str], items: list[str]) -> dict[str, tuple[list[str], str]]:
    """user -> (history, target) in original ids."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        user, history, target = line.split("\t")
        out[users[int(user)]] = ([items[int(i)] for i in history.split()], items[int(target)])
    return out


def split_targets(loader, dataset) -> dict[str, tuple[list[str], str]]:
    """user -> (history, target) from a RecBole eval dataloader, in original ids."""
    feat = loader._dataset.inter_feat
    user_tok = dataset.field2id_token["user_id"]
    item_tok = dataset.field2id_token["item_id"]
    out = {}
    for u, target, hist, n in zip(
        feat["user_id"].tolist(),
        feat["item_id"].tolist(),
        feat["item_id_list"].tolist(),
        feat["item_length"].tolist(),
        strict=True,
    ):
        out[user_tok[u]] = ([item_tok[i] for i in hist[:n]], item_tok[target])
    return out


def test_scientific_loo_split_matches_unisrec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scientific: Path
) -> None:
    assert (
        main(
            ["import-unisrec", "--input", str(scientific), "--name", "scientific", "--output", str(tmp_path)]
        )
        == 0
    )

    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    monkeypatch.setattr(sys, "argv", ["pytest"])  # RecBole's Config parses --key=value from sys.argv
    config = Config(
        model="SASRec",
        dataset="scientific",
        config_file_list=[str(tmp_path / "scientific" / "scientific.yaml")],
        config_dict={"train_neg_sample_args": None, "loss_type": "CE", "show_progress": False},
    )
    logging.getLogger().setLevel(logging.ERROR)
    dataset = create_dataset(config)
    _, valid_data, test_data = data_preparation(config, dataset)

    users = read_index(scientific / "Scientific.user2index")
    items = read_index(scientific / "Scientific.item2index")
    expected_valid = read_split(scientific / "Scientific.valid.inter", users, items)
    expected_test = read_split(scientific / "Scientific.test.inter", users, items)
    got_valid = split_targets(valid_data, dataset)
    got_test = split_targets(test_data, dataset)

    # every user of user2index has one test line (8442 in the full files), counted from the raw lines
    test_users = [line.split("\t", 1)[0] for line in read_lines(scientific / "Scientific.test.inter")[1:]]
    assert len(expected_test) == len(users) == len(test_users) == len(set(test_users)) > 0
    assert {u: t for u, (_, t) in got_valid.items()} == {u: t for u, (_, t) in expected_valid.items()}
    assert {u: t for u, (_, t) in got_test.items()} == {u: t for u, (_, t) in expected_test.items()}
    assert got_test == expected_test  # histories too (both capped at 50)
    assert got_valid == expected_valid
    # the items of the three splits, counted from the raw lines (in the full files: all of item2index)
    used = set()
    for split in ("train", "valid", "test"):
        for line in read_lines(scientific / f"Scientific.{split}.inter")[1:]:
            _, history, target = line.split("\t")
            used.update([*history.split(), target])
    assert dataset.item_num - 1 == len(used) and used <= {str(i) for i in range(len(items))}
    assert "text" in dataset.item_feat.columns


def test_inconsistent_unisrec_files_are_rejected(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "Toy.item2index").write_text("I0\t0\nI1\t1\nI2\t2\n")
    (src / "Toy.user2index").write_text("U0\t0\n")
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    (src / "Toy.train.inter").write_text(head + "0\t0\t1\n")
    (src / "Toy.valid.inter").write_text(head + "0\t0 1\t2\n")
    (src / "Toy.test.inter").write_text(head + "0\t0 2\t1\n")  # history should be "0 1 2"
    (src / "Toy.text").write_text("item_id:token\ttext:token_seq\nI0\ta\nI1\tb\nI2\tc\n")
    assert main(["import-unisrec", "--input", str(src), "--name", "toy", "--output", str(tmp_path)]) == 2
    assert "Toy.test.inter:2: line does not match" in capsys.readouterr().err


HEAD = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
TOY = {
    "Toy.item2index": "I0\t0\nI1\t1\nI2\t2\n",
    "Toy.user2index": "U0\t0\n",
    "Toy.train.inter": HEAD + "0\t0\t1\n",
    "Toy.valid.inter": HEAD + "0\t0 1\t2\n",
    "Toy.test.inter": HEAD + "0\t0 1 2\t1\n",
    "Toy.text": "item_id:token\ttext:token_seq\nI0\ta\nI1\tb\nI2\tc\n",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"Toy.test.inter": HEAD},
            "{src}/Toy.test.inter: no test lines (only the header): nothing to import",
        ),
        ({"Toy.user2index": "U0\t0\nU1\t0\n"}, "{src}/Toy.user2index:2: index 0 appears twice"),
        ({"Toy.text": None}, "{src}/Toy.text: is a folder, not a file"),
        (
            {"Toy.valid.inter": b"\xc3("},
            "{src}/Toy.valid.inter:1: not UTF-8 text (invalid continuation byte)",
        ),
        (
            {"Toy.test.inter": HEAD + "0\t0 1 2\t7\n"},
            "{src}/Toy.test.inter:2: user or item index out of range",
        ),
    ],
    ids=["no-test-lines", "duplicate-index", "text-is-a-folder", "binary", "index-out-of-range"],
)
def test_broken_unisrec_files(tmp_path: Path, capsys, change: dict, message: str) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name, text in {**TOY, **change}.items():
        if text is None:
            (src / name).mkdir()
        else:
            (src / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "out"
    assert main(["import-unisrec", "--input", str(src), "--name", "toy", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"srt-prep: error: {message.format(src=src)}")
    assert "Traceback" not in err and not (out / "toy").exists()


def test_import_is_atomic_and_refuses_a_path_as_name(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name, text in TOY.items():
        (src / name).write_text(text)
    out = tmp_path / "out"
    assert main(["import-unisrec", "--input", str(src), "--name", "toy", "--output", str(out)]) == 0
    manifest = json.loads((out / "toy" / "manifest.json").read_text())["files"]
    assert sorted(manifest) == ["report.json", "toy.inter", "toy.item", "toy.yaml"]
    before = {p.name: p.read_bytes() for p in (out / "toy").iterdir()}
    (src / "Toy.test.inter").write_text(HEAD)  # now broken: the previous import stays as it was
    assert main(["import-unisrec", "--input", str(src), "--name", "toy", "--output", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in (out / "toy").iterdir()} == before
    assert [p.name for p in out.iterdir()] == ["toy"]
    capsys.readouterr()
    assert main(["import-unisrec", "--input", str(src), "--name", "../toy", "--output", str(out)]) == 2
    assert "--name '../toy' must be one folder name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
