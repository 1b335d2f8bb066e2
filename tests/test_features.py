"""Item text features: reading, encoding, caching and alignment to RecBole's internal ids."""

from __future__ import annotations

import hashlib
import logging
import random
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
