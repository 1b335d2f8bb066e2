"""Item text features: reading, encoding, caching and alignment to RecBole's internal ids."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config, write_tiny_dataset
from recbole.config import Config
from recbole.data import create_dataset

from recbole_srt.features import (
    ItemEncoder,
    ItemFeatureError,
    cache_stem,
    load_item_features,
    read_item_texts,
    resolve_encoder,
)


def fake_encoding(texts, *args, **kwargs) -> np.ndarray:
    """A deterministic stand-in encoder: 8 numbers from each text's SHA-256."""
    return np.array(
        [np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], dtype=np.uint8) for t in texts],
        dtype=np.float32,
    )


@pytest.fixture
def counting_encoder(monkeypatch):
    """Replace the sentence encoder by :func:`fake_encoding` and count the texts it encodes."""
    calls: list[int] = []

    def encode(self, texts):
        calls.append(len(texts))
        return fake_encoding(texts)

    monkeypatch.setattr(ItemEncoder, "encode", encode)
    return calls


def recbole_dataset(data_root: Path, name: str = "tiny", **overrides):
    config = Config(model="SRT", dataset=name, config_dict=tiny_config(data_root, **overrides))
    return config, create_dataset(config)


def test_default_text_fields_are_the_token_fields(tiny_dataset):
    texts = read_item_texts(tiny_dataset / "tiny.item", "item_id")
    assert texts.fields == ["title", "brand"]  # price is a float field: not text
    assert texts.tokens[3] == "i3" and texts.texts[3] == "black pipette tips model 3. brand3"


def test_repeated_item_rows_keep_the_first(tmp_path):
    item = tmp_path / "x.item"
    item.write_text("item_id:token\ttitle:token_seq\na\tfirst\nb\tother\na\tsecond\n")
    texts = read_item_texts(item, "item_id")
    assert texts.tokens == ["a", "b"] and texts.texts == ["first", "other"] and texts.duplicate_rows == 1


def test_rows_align_with_shuffled_internal_ids(tmp_path, counting_encoder):
    # Shuffle the interaction file so RecBole's internal ids follow neither item names nor .item order.
    folder = write_tiny_dataset(tmp_path)
    lines = (folder / "tiny.inter").read_text().splitlines()
    body = lines[1:]
    random.Random(7).shuffle(body)
    (folder / "tiny.inter").write_text("\n".join([lines[0], *body]) + "\n")

    config, dataset = recbole_dataset(tmp_path)
    matrix = load_item_features(config, dataset).numpy()
    id2token = dataset.field2id_token["item_id"]
    assert list(id2token[1:6]) != [f"i{i}" for i in range(5)], "ids should be shuffled for this test"
    item_texts = read_item_texts(folder / "tiny.item", "item_id")
    text_of = dict(zip(item_texts.tokens, item_texts.texts, strict=True))
    assert np.all(matrix[0] == 0)
    for internal_id in range(1, len(id2token)):
        expected = fake_encoding([text_of[id2token[internal_id]]])[0]
        np.testing.assert_array_equal(matrix[internal_id], expected)


def test_second_load_encodes_nothing_and_edits_invalidate(tmp_path, counting_encoder):
    folder = write_tiny_dataset(tmp_path)
    config, dataset = recbole_dataset(tmp_path)
    first = load_item_features(config, dataset)
    assert counting_encoder == [31]  # 30 distinct titles + the empty string
    assert (folder / "tiny.srt-all-MiniLM-L6-v2.npy").is_file()

    second = load_item_features(config, dataset)
    assert counting_encoder == [31], "a cache hit must encode nothing"
    np.testing.assert_array_equal(first.numpy(), second.numpy())

    item_file = folder / "tiny.item"
    item_file.write_text(item_file.read_text().replace("model 3\t", "model three\t"))
    third = load_item_features(config, dataset)
    assert len(counting_encoder) == 2
    assert not np.array_equal(first.numpy(), third.numpy())


def test_items_without_text_are_counted_and_get_the_empty_text(tmp_path, counting_encoder, caplog):
    write_tiny_dataset(tmp_path, items_without_text=3)
    config, dataset = recbole_dataset(tmp_path)
    with caplog.at_level(logging.WARNING):
        matrix = load_item_features(config, dataset).numpy()
    assert "3 of 30 items (10.0 %) have no text in fields ['title', 'brand']" in caplog.text
    id2token = list(dataset.field2id_token["item_id"])
    for token in ("i27", "i28", "i29"):
        np.testing.assert_array_equal(matrix[id2token.index(token)], fake_encoding([""])[0])


def test_missing_text_error_policy(tmp_path, counting_encoder):
    write_tiny_dataset(tmp_path, items_without_text=2)
    config, dataset = recbole_dataset(tmp_path, missing_text="error")
    with pytest.raises(ItemFeatureError, match="2 items have no feature row"):
        load_item_features(config, dataset)


def test_user_supplied_matrix_with_id_index(tmp_path):
    write_tiny_dataset(tmp_path)
    tokens = [f"i{i}" for i in range(29, -1, -1)]  # reverse order, unlike the .item file
    matrix = np.arange(30 * 4, dtype=np.float32).reshape(30, 4)
    np.save(tmp_path / "mine.npy", matrix)
    (tmp_path / "mine.ids").write_text("\n".join(tokens) + "\n")
    config, dataset = recbole_dataset(tmp_path, item_feature_file=str(tmp_path / "mine.npy"))
    aligned = load_item_features(config, dataset).numpy()
    for internal_id, token in enumerate(dataset.field2id_token["item_id"][1:], start=1):
        np.testing.assert_array_equal(aligned[internal_id], matrix[tokens.index(token)])


def test_user_supplied_matrix_of_the_wrong_size_is_rejected(tmp_path):
    write_tiny_dataset(tmp_path)
    np.save(tmp_path / "short.npy", np.zeros((29, 4), dtype=np.float32))
    config, dataset = recbole_dataset(tmp_path, item_feature_file=str(tmp_path / "short.npy"))
    with pytest.raises(ItemFeatureError, match=r"shape \(29, 4\) does not match its 30 item ids"):
        load_item_features(config, dataset)


def test_missing_item_file_is_a_clear_error(tmp_path):
    write_tiny_dataset(tmp_path)
    (tmp_path / "tiny" / "tiny.item").unlink()
    config, dataset = recbole_dataset(tmp_path)
    with pytest.raises(ItemFeatureError, match="needs item text"):
        load_item_features(config, dataset)


def test_bundled_default_encoder_loads_offline_and_separates_texts():
    path = Path(resolve_encoder("sentence-transformers/all-MiniLM-L6-v2"))
    assert (path / "model.safetensors").is_file()
    assert resolve_encoder("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    encoder = ItemEncoder("all-MiniLM-L6-v2")
    vectors = encoder.encode(["red guitar strings", "red guitar string set", "lab goggles"])
    model = encoder.model
    encoder.encode(["one more"])
    assert encoder.model is model  # loaded once, reused by every call
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2]


def test_a_warm_cache_never_imports_sentence_transformers(tmp_path):
    """The encoder library (and its memory) is loaded only when something must be encoded."""
    import subprocess
    import sys

    folder = write_tiny_dataset(tmp_path)
    texts = read_item_texts(folder / "tiny.item", "item_id")
    stem = cache_stem(folder, "tiny", "fake")
    encoder = ItemEncoder("fake")
    encoder._model = type("Fake", (), {"encode": lambda self, texts, **kw: fake_encoding(texts)})()
    encoder.encode_items(texts, stem)
    code = (
        "import sys; from pathlib import Path\n"
        "from recbole_srt.features import ItemEncoder, read_item_texts\n"
        f"texts = read_item_texts(Path({str(folder / 'tiny.item')!r}), 'item_id')\n"
        f"m, _ = ItemEncoder('fake').encode_items(texts, Path({str(stem)!r}))\n"
        "print(m.shape[0], 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["30", "False"]


def test_cache_location_rule(tmp_path):
    assert cache_stem(tmp_path, "d", "org/My Encoder") == tmp_path / "d.srt-My_Encoder"
    assert cache_stem(tmp_path, "d", "e", cache_dir=tmp_path / "c") == tmp_path / "c" / "d.srt-e"


# --- bad input: a damaged cache is rebuilt, a bad item_feature_file is a clear error ---------------


def _cached(tmp_path, counting_encoder):
    """A tiny dataset whose feature cache was just written; (config, dataset, features, npy, json)."""
    folder = write_tiny_dataset(tmp_path)
    config, dataset = recbole_dataset(tmp_path)
    features = load_item_features(config, dataset).numpy()
    npy, meta = (folder / f"tiny.srt-all-MiniLM-L6-v2.{ext}" for ext in ("npy", "json"))
    assert counting_encoder == [31]
    return config, dataset, features, npy, meta


def _damage_extra_rows(npy, meta):
    matrix = np.load(npy)
    np.save(npy, np.concatenate([matrix, matrix[:3]]))


def _damage_fewer_rows(npy, meta):
    np.save(npy, np.load(npy)[:-4])


def _damage_truncated(npy, meta):
    npy.write_bytes(npy.read_bytes()[:1000])


def _damage_index(npy, meta):
    meta.write_text(meta.read_text()[:-20])


def _damage_values(npy, meta):
    matrix = np.load(npy)
    matrix[5, 2] += 1.0  # same shape and dtype, other content
    np.save(npy, matrix)


def _damage_dtype(npy, meta):
    np.save(npy, np.load(npy).astype(np.float64))


@pytest.mark.parametrize(
    ("damage", "warning"),
    [
        (_damage_extra_rows, r"shape \[34, 8\] float32, its index records \[31, 8\] float32 \(31 rows\)"),
        (_damage_fewer_rows, r"shape \[27, 8\] float32, its index records \[31, 8\] float32 \(31 rows\)"),
        (_damage_truncated, r"\.npy: unreadable \("),
        (_damage_index, r"\.json: unreadable index \("),
        (_damage_values, "its content differs from the SHA-256 the index records"),
        (_damage_dtype, r"shape \[31, 8\] float64, its index records \[31, 8\] float32"),
    ],
)
def test_a_damaged_feature_cache_is_rebuilt_with_one_warning(
    tmp_path, counting_encoder, caplog, damage, warning
):
    config, dataset, features, npy, meta = _cached(tmp_path, counting_encoder)
    damage(npy, meta)
    with caplog.at_level(logging.WARNING, logger="recbole_srt.features"):
        rebuilt = load_item_features(config, dataset).numpy()
    (record,) = caplog.records
    assert record.levelname == "WARNING" and record.getMessage().endswith("; re-encoding")
    assert re.search(warning, record.getMessage()), record.getMessage()
    assert counting_encoder == [31, 31]  # encoded again, once
    np.testing.assert_array_equal(rebuilt, features)
    caplog.clear()
    load_item_features(config, dataset)  # the rebuilt cache is whole again: a silent hit
    assert counting_encoder == [31, 31] and not caplog.records


def test_a_cache_written_before_integrity_records_is_rebuilt_once(tmp_path, counting_encoder, caplog):
    config, dataset, _, npy, meta = _cached(tmp_path, counting_encoder)
    index = json.loads(meta.read_text())
    meta.write_text(
        json.dumps({k: v for k, v in index.items() if k not in ("shape", "dtype", "array_sha256")})
    )
    with caplog.at_level(logging.WARNING, logger="recbole_srt.features"):
        load_item_features(config, dataset)
    assert "records no shape, dtype and SHA-256 (an older version wrote it)" in caplog.text
    assert counting_encoder == [31, 31]


def test_cache_files_have_the_users_umask_and_no_temporary_file_stays(tmp_path, counting_encoder):
    old = os.umask(0o027)
    try:
        _, _, _, npy, meta = _cached(tmp_path, counting_encoder)
    finally:
        os.umask(old)
    assert stat.S_IMODE(npy.stat().st_mode) == stat.S_IMODE(meta.stat().st_mode) == 0o640
    assert not list(npy.parent.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (
            np.array([{"a": 1}] * 30, dtype=object),
            r"not a readable \.npy array \(Object arrays cannot be loaded",
        ),
        (np.zeros(30, dtype=np.float32), r"a 1-D float32 array; item_feature_file must be a 2-D float array"),
        (
            np.zeros((30, 4), dtype=np.int64),
            r"a 2-D int64 array; item_feature_file must be a 2-D float array",
        ),
        (np.zeros((30, 4, 2), dtype=np.float32), r"a 3-D float32 array"),
    ],
)
def test_an_item_feature_file_that_is_not_a_float_matrix_is_refused(tmp_path, array, message):
    write_tiny_dataset(tmp_path)
    np.save(tmp_path / "mine.npy", array, allow_pickle=True)
    config, dataset = recbole_dataset(tmp_path, item_feature_file=str(tmp_path / "mine.npy"))
    with pytest.raises(ItemFeatureError, match=message):
        load_item_features(config, dataset)


def test_a_truncated_or_missing_item_feature_file_is_refused(tmp_path):
    write_tiny_dataset(tmp_path)
    np.save(tmp_path / "mine.npy", np.ones((30, 4), dtype=np.float32))
    (tmp_path / "mine.npy").write_bytes((tmp_path / "mine.npy").read_bytes()[:200])
    config, dataset = recbole_dataset(tmp_path, item_feature_file=str(tmp_path / "mine.npy"))
    with pytest.raises(ItemFeatureError, match=r"mine\.npy: not a readable \.npy array"):
        load_item_features(config, dataset)
    config["item_feature_file"] = str(tmp_path / "gone.npy")
    with pytest.raises(ItemFeatureError, match=r"gone\.npy: no such item_feature_file"):
        load_item_features(config, dataset)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])  # 1e300 is Inf as float32
def test_nan_or_inf_in_an_item_feature_file_names_the_row_and_item(tmp_path, bad):
    write_tiny_dataset(tmp_path)
    matrix = np.ones((30, 4))
    matrix[17, 2] = matrix[20, 0] = bad
    np.save(tmp_path / "mine.npy", matrix)
    config, dataset = recbole_dataset(tmp_path, item_feature_file=str(tmp_path / "mine.npy"))
    message = r"mine\.npy: row 17 \(0-based; item 'i17'\) holds NaN or Inf as float32 \(2 of 30 rows\)"
    with pytest.raises(ItemFeatureError, match=message):
        load_item_features(config, dataset)


def _blank_texts(folder: Path, keep: int) -> None:
    """Empty the title and brand of every item of ``folder/tiny.item`` but the first ``keep``."""
    header, *rows = (folder / "tiny.item").read_text().splitlines()
    rows = [
        row if i < keep else "\t".join([row.split("\t")[0], "", "", row.split("\t")[3]])
        for i, row in enumerate(rows)
    ]
    (folder / "tiny.item").write_text("\n".join([header, *rows]) + "\n")


def test_all_texts_empty_is_refused_before_encoding(tmp_path, counting_encoder):
    folder = write_tiny_dataset(tmp_path)
    _blank_texts(folder, keep=0)
    config, dataset = recbole_dataset(tmp_path)
    message = (
        f"dataset tiny ({folder / 'tiny.item'}): 30 of 30 items (100.0%) have no text in fields "
        "['title', 'brand'], so every item would get the same features; set text_fields to fields that "
        "hold text, or give item_feature_file (missing_text only decides what the few items without text get)"
    )
    with pytest.raises(ItemFeatureError, match=f"^{re.escape(message)}$"):
        load_item_features(config, dataset)
    assert counting_encoder == [] and not list(folder.glob("*.srt-*"))  # nothing encoded, nothing written
    config["missing_text"] = "error"  # missing_text: error keeps its meaning
    with pytest.raises(
        ItemFeatureError, match=r"30 items have empty text \(e\.g\. .*\) and missing_text=error"
    ):
        load_item_features(config, dataset)


def test_some_texts_empty_is_a_warning_with_the_fraction(tmp_path, counting_encoder, caplog):
    folder = write_tiny_dataset(tmp_path)
    _blank_texts(folder, keep=24)
    config, dataset = recbole_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="recbole_srt.features"):
        load_item_features(config, dataset)
    assert "6 of 30 items (20.0 %) have no text in fields ['title', 'brand']" in caplog.text
