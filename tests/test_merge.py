"""srt-prep merge: a corpus keeps its sources apart, reads items as SRT does, and guards the target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import write_tiny_dataset
from recbole.config import Config
from recbole.data import create_dataset

from dataset_prep.errors import PrepError
from dataset_prep.merge import merge
from recbole_srt.catalog import read_item_texts


@pytest.fixture
def sources(tmp_path: Path) -> list[tuple[str, Path]]:
    """Two tiny datasets whose user and item ids collide (u0, i0, ...), one with a text_fields choice."""
    a = write_tiny_dataset(tmp_path / "src", "a", n_users=12, n_items=15, seed=1)
    b = write_tiny_dataset(tmp_path / "src", "b", n_users=9, n_items=13, seed=2)
    (b / "b.yaml").write_text("text_fields: [title]\n")
    return [("a", a), ("b", b)]


def test_sources_keep_their_ids_text_and_order(sources, tmp_path):
    report = merge(sources, tmp_path / "out", "corpus")
    corpus = tmp_path / "out" / "corpus"
    inter = [line.split("\t") for line in (corpus / "corpus.inter").read_text().splitlines()[1:]]
    expected = []
    for name, folder in sources:
        rows = (folder / f"{name}.inter").read_text().splitlines()[1:]
        expected += [
            [f"{name}/{r.split(chr(9))[0]}", f"{name}/{r.split(chr(9))[1]}", r.split("\t")[3]] for r in rows
        ]
    assert inter == expected  # every interaction, ids namespaced, timestamps kept
    merged = read_item_texts(corpus / "corpus.item", "item_id", ["text"])
    merged_text = dict(zip(merged.tokens, merged.texts, strict=True))
    for name, folder in sources:  # the text SRT reads for an item in its own dataset
        fields = ["title"] if name == "b" else None
        own = read_item_texts(folder / f"{name}.item", "item_id", fields)
        for token, text in zip(own.tokens, own.texts, strict=True):
            if f"{name}/{token}" in merged_text:
                assert merged_text[f"{name}/{token}"] == text
    assert "brand" in merged_text["a/i1"] and "brand" not in merged_text["b/i1"]
    assert report["interactions"] == len(expected) and report["sources"]["b"]["text_fields"] == ["title"]


def test_the_guard_removes_the_targets_users_from_guarded_sources_only(sources, tmp_path):
    target = write_tiny_dataset(tmp_path / "target", "t", n_users=3, n_items=12)  # users u0, u1, u2
    report = merge(sources, tmp_path / "out", "corpus", exclude_users_of=[target / "t.inter"], guard=["a"])
    users = {
        line.split("\t")[0] for line in (tmp_path / "out/corpus/corpus.inter").read_text().splitlines()[1:]
    }
    assert {"a/u0", "a/u1", "a/u2"}.isdisjoint(users) and {"b/u0", "b/u1", "b/u2"} <= users
    assert report["sources"]["a"]["users"] == {"before": 12, "after": 9}
    assert report["sources"]["b"]["users"] == {"before": 9, "after": 9}


def test_recbole_loads_the_corpus(sources, tmp_path, monkeypatch):
    merge(sources, tmp_path / "out", "corpus")
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    yaml_file = tmp_path / "out" / "corpus" / "corpus.yaml"
    config = Config(model="SASRec", dataset="corpus", config_file_list=[str(yaml_file)],
                    config_dict={"train_neg_sample_args": None})  # fmt: skip
    dataset = create_dataset(config)
    assert dataset.user_num - 1 == 21 and set(dataset.field2id_token["domain"][1:]) == {"a", "b"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s, t: (s + [("a", s[0][1])], {}), "source names must be distinct"),
        (lambda s, t: (s, {"guard": ["c"], "exclude_users_of": [t]}), r"--guard \['c'\] names no source"),
        (lambda s, t: (s, {"guard": ["a"]}), "--guard needs --exclude-users-of"),
    ],
)
def test_bad_sources_are_one_line(sources, tmp_path, change, message):
    target = write_tiny_dataset(tmp_path / "target", "t") / "t.inter"
    chosen, options = change(sources, target)
    with pytest.raises(PrepError, match=message):
        merge(chosen, tmp_path / "out", "corpus", **options)
    assert not (tmp_path / "out" / "corpus").exists()


def test_the_cli_merges_and_refuses_in_one_line(sources, tmp_path, capsys):
    from dataset_prep.cli import main

    args = [
        "merge",
        *[f"--dataset={n}={f}" for n, f in sources],
        "--output",
        str(tmp_path / "out"),
        "--name",
        "c",
    ]
    assert main(args) == 0
    assert '"interactions"' in capsys.readouterr().out and (tmp_path / "out" / "c" / "c.yaml").is_file()
    assert main([*args, "--guard", "a"]) == 2
    assert capsys.readouterr().err == "srt-prep: error: --guard needs --exclude-users-of\n"
