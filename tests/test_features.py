"""Item text features: reading, encoding, caching and alignment to RecBole's internal ids."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import tiny_config, write_tiny_dataset
from recbole.config import Config
from recbole.data import create_dataset

from recbole_srt.catalog import ItemFeatureError, read_item_texts
from recbole_srt.encoder import ItemEncoder, default_cache_dir, resolve_encoder
from recbole_srt.features import load_item_features
from recbole_srt.store import VectorStore, digests


def fake_encoding(texts, *args, **kwargs) -> np.ndarray:
    """A deterministic stand-in encoder: 8 numbers from each text's SHA-256."""
    return np.array(
        [np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], dtype=np.uint8) for t in texts],
        dtype=np.float32,
    )


@pytest.fixture
def counting_encoder(monkeypatch, tmp_path):
    """Replace the sentence encoder by :func:`fake_encoding` (with a store of its own under
    ``tmp_path/store``) and count the texts it encodes."""
    monkeypatch.setenv("RECBOLE_SRT_CACHE", str(tmp_path / "store"))
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


def test_repeated_item_rows_keep_the_first(tmp_path, caplog):
    item = tmp_path / "x.item"
    item.write_text("item_id:token\ttitle:token_seq\na\tfirst\nb\tother\na\tsecond\n")
    texts = read_item_texts(item, "item_id")
    assert texts.tokens == ["a", "b"] and texts.texts == ["first", "other"] and texts.duplicate_rows == 1
    assert f"{item}: 1 repeated item ids, first row kept" in caplog.text  # training and serving alike


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


def shard_files(tmp_path: Path, suffix: str) -> list[Path]:
    """The store's files ending in ``suffix`` (of the default encoder setting, as written by the tests)."""
    return sorted((tmp_path / "store" / "vectors").glob(f"all-MiniLM-L6-v2-*/*{suffix}"))


def mapped_from(address: int) -> Path | None:
    """The file whose memory map holds ``address`` in this process (Linux ``/proc/self/maps``)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *_, path = line.split(maxsplit=5) if len(line.split()) == 6 else [line.split()[0], None]
        start, end = (int(x, 16) for x in span.split("-"))
        if start <= address < end:
            return Path(path) if path else None
    return None


def test_second_load_encodes_nothing_and_only_new_texts_are_encoded(tmp_path, counting_encoder):
    folder = write_tiny_dataset(tmp_path)
    config, dataset = recbole_dataset(tmp_path)
    first = load_item_features(config, dataset)
    assert counting_encoder == [30]  # 30 distinct titles; the padding row is zeros, never encoded
    assert len(shard_files(tmp_path, ".json")) == 1
    assert not first[0].any()

    second = load_item_features(config, dataset)
    assert counting_encoder == [30], "a store that holds every text must encode nothing"
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    # asked again in the same order, the features are the shard's memory map, not a copy of it
    (vectors_file,) = shard_files(tmp_path, ".vectors.npy")
    assert mapped_from(second.data_ptr()) == vectors_file.resolve()
    assert mapped_from(first.data_ptr()) == vectors_file.resolve()  # the first load maps what it wrote

    item_file = folder / "tiny.item"
    item_file.write_text(item_file.read_text().replace("model 3\t", "model three\t"))
    third = load_item_features(config, dataset)
    assert counting_encoder == [30, 1], "only the edited text is new"
    changed = dataset.field2id_token["item_id"].tolist().index("i3")
    assert not np.array_equal(first.numpy()[changed], third.numpy()[changed])
    np.testing.assert_array_equal(np.delete(first.numpy(), changed, 0), np.delete(third.numpy(), changed, 0))


def test_a_derived_dataset_reuses_every_vector(tmp_path, counting_encoder):
    """A cold-start copy, a pre-training mix or a serving catalog with known texts encodes nothing."""
    write_tiny_dataset(tmp_path)
    config, dataset = recbole_dataset(tmp_path)
    features = load_item_features(config, dataset).numpy()
    copy = write_tiny_dataset(tmp_path, name="copy", n_items=20, seed=3)  # other users, a subset of the items
    copy_config, copy_dataset = recbole_dataset(tmp_path, name="copy")
    copied = load_item_features(copy_config, copy_dataset).numpy()
    assert counting_encoder == [30]
    tokens = dataset.field2id_token["item_id"].tolist()
    for row, token in enumerate(copy_dataset.field2id_token["item_id"][1:], start=1):
        np.testing.assert_array_equal(copied[row], features[tokens.index(token)])
    assert copy.is_dir()


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


TEXTS = [
    "red guitar strings",
    "Lab goggles. Safety. Brand: Acme. Anti-fog, scratch resistant, for chemistry and biology labs",
    "pipette tips, 1000 ul, sterile, racked, universal fit for all major brands of pipettes",
]


def test_onnx_backends_are_exported_once_and_match_torch(tmp_path, monkeypatch):
    reference = ItemEncoder(cache_dir=tmp_path).encode(TEXTS)
    onnx = ItemEncoder(backend="onnx", cache_dir=tmp_path, batch_size=2).encode(TEXTS)
    assert np.abs(onnx - reference).max() < 1e-4
    int8 = ItemEncoder(backend="onnx-int8", cache_dir=tmp_path).encode(TEXTS)
    assert ((int8 * reference).sum(1) / np.linalg.norm(int8, axis=1) > 0.95).all()  # close, not equal
    assert np.abs(int8 - reference).max() > 1e-4
    (export,) = (tmp_path / "encoders").iterdir()
    assert sorted(p.name for p in export.iterdir()) == [
        "model-int8.onnx", "model-int8.onnx.json", "model.onnx", "model.onnx.json"
    ]  # fmt: skip
    monkeypatch.setattr("torch.onnx.export", lambda *a, **k: pytest.fail("exported again"))
    np.testing.assert_allclose(ItemEncoder(backend="onnx", cache_dir=tmp_path).encode(TEXTS), onnx, atol=1e-6)


def test_a_damaged_onnx_export_is_built_again_with_one_warning(tmp_path, caplog):
    reference = ItemEncoder(backend="onnx-int8", cache_dir=tmp_path).encode(TEXTS)
    (int8,) = tmp_path.glob("encoders/*/model-int8.onnx")
    for damage in (lambda data: data[: len(data) // 2], lambda data: b""):  # cut short, emptied
        int8.write_bytes(damage(int8.read_bytes()))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="recbole_srt.encoder"):
            again = ItemEncoder(backend="onnx-int8", cache_dir=tmp_path).encode(TEXTS)
        (record,) = caplog.records
        assert record.getMessage() == (
            f"encoder cache {int8.parent}: model-int8.onnx differs from the SHA-256 recorded when it was "
            "written; building it again"
        )
        np.testing.assert_allclose(again, reference, atol=1e-6)


def test_an_encoder_cache_that_cannot_be_written_is_one_line_naming_the_setting(tmp_path):
    (tmp_path / "encoders").write_text("a file where the folder goes")
    message = (
        f"cannot write the encoder cache {tmp_path / 'encoders'}/all-MiniLM-L6-v2-.*; set feature_cache_dir "
        r"\(or \$RECBOLE_SRT_CACHE\) to a writable folder"
    )
    with pytest.raises(ValueError, match=message):
        ItemEncoder(backend="onnx", cache_dir=tmp_path).encode(TEXTS)


def test_token_cap_and_processes(tmp_path):
    full = ItemEncoder(cache_dir=tmp_path).encode(TEXTS)
    capped = ItemEncoder(max_tokens=8, cache_dir=tmp_path).encode(TEXTS)
    np.testing.assert_allclose(capped[0], full[0], atol=1e-5)  # 5 tokens with [CLS] and [SEP]: unchanged
    assert np.abs(capped[1:] - full[1:]).max() > 1e-3  # the long texts are cut
    np.testing.assert_allclose(ItemEncoder(processes=2, cache_dir=tmp_path).encode(TEXTS), full, atol=1e-5)


def test_a_warm_store_never_imports_sentence_transformers(tmp_path):
    """The encoder library (and its memory) is loaded only when something must be encoded."""
    import subprocess
    import sys

    folder = write_tiny_dataset(tmp_path)
    texts = read_item_texts(folder / "tiny.item", "item_id").texts
    encoder = ItemEncoder("fake", cache_dir=tmp_path / "store")
    encoder._model = type("Fake", (), {"encode": lambda self, texts, **kw: fake_encoding(texts)})()
    encoder.vectors(texts)
    code = (
        "import sys; from pathlib import Path\n"
        "from recbole_srt.catalog import read_item_texts\n"
        "from recbole_srt.encoder import ItemEncoder\n"
        f"texts = read_item_texts(Path({str(folder / 'tiny.item')!r}), 'item_id').texts\n"
        f"m = ItemEncoder('fake', cache_dir={str(tmp_path / 'store')!r}).vectors(texts)\n"
        "print(m.shape[0], 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["30", "False"]


def test_store_location_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBOLE_SRT_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RECBOLE_SRT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "recbole_srt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "recbole_srt"
    # Aliases of one encoder share a setting; what changes the vectors changes it; processes do not.
    plain = ItemEncoder("all-MiniLM-L6-v2").setting
    assert plain == ItemEncoder("sentence-transformers/all-MiniLM-L6-v2", processes=2).setting
    assert plain.startswith("all-MiniLM-L6-v2-")
    others = {ItemEncoder(backend="onnx-int8").setting, ItemEncoder(max_tokens=64).setting}
    others |= {ItemEncoder(precision="bf16").setting, ItemEncoder("org/My Encoder").setting}
    assert len(others | {plain}) == 5
    assert ItemEncoder(max_tokens=64).setting.startswith("all-MiniLM-L6-v2-t64-")
    assert ItemEncoder("org/My Encoder").setting.startswith("My_Encoder-")


def test_auto_is_int8_onnx_on_a_cpu_and_what_it_chose_goes_into_the_config(tmp_path, counting_encoder):
    assert (ItemEncoder(backend="auto").backend, ItemEncoder(backend="auto").precision) == (
        "onnx-int8",
        "fp32",
    )
    gpu = ItemEncoder(backend="auto", precision="auto", device="cuda")  # nothing is loaded yet
    assert gpu.backend == "torch"
    write_tiny_dataset(tmp_path)
    config, dataset = recbole_dataset(tmp_path)
    assert (config["text_encoder_backend"], config["text_max_tokens"]) == ("auto", 48)  # SRT.yaml
    load_item_features(config, dataset)
    assert (config["text_encoder_backend"], config["text_encoder_precision"]) == ("onnx-int8", "fp32")
    assert shard_files(tmp_path, ".json")[0].parent.name.startswith("all-MiniLM-L6-v2-onnx-int8-t48-")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "tensorrt"}, "text_encoder_backend must be one of"),
        ({"precision": "int4"}, "text_encoder_precision must be one of"),
        ({"backend": "onnx", "precision": "bf16"}, "apply to text_encoder_backend torch"),
        ({"max_tokens": 0}, "text_max_tokens must be a positive integer, got 0"),
        ({"processes": 1.5}, "text_encoder_processes must be a positive integer, got 1.5"),
    ],
)
def test_bad_encoder_options_are_refused(options, message):
    with pytest.raises(ItemFeatureError, match=message):
        ItemEncoder(**options)


# --- bad input: a damaged cache is rebuilt, a bad item_feature_file is a clear error ---------------


def _cached(tmp_path, counting_encoder):
    """A tiny dataset whose vectors were just stored; (config, dataset, features, vectors npy, index json)."""
    write_tiny_dataset(tmp_path)
    config, dataset = recbole_dataset(tmp_path)
    # a copy: the features map the shard's file, which the damage functions rewrite in place
    features = load_item_features(config, dataset).numpy().copy()
    (npy,), (meta,) = shard_files(tmp_path, ".vectors.npy"), shard_files(tmp_path, ".json")
    assert counting_encoder == [30]  # 30 titles; the 31st row is the padding
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


def _damage_keys_reordered(npy, meta):
    """The keys file in another order: same shape and dtype (each text would get another's vector)."""
    keys = npy.with_name(npy.name.replace(".vectors.", ".keys."))
    np.save(keys, np.load(keys)[::-1])


def _damage_values_times_kept(npy, meta):
    """Other values, the file's size and modification time set back to the recorded ones."""
    found = npy.stat()
    _damage_values(npy, meta)
    os.utime(npy, ns=(found.st_atime_ns, found.st_mtime_ns))


def _damage_fifo(npy, meta):
    npy.unlink()
    os.mkfifo(npy)  # a reader that opened it would wait forever


DIFFERS = "differs from the SHA-256 recorded when it was written"


@pytest.mark.parametrize(
    ("damage", "warning"),
    [
        (_damage_extra_rows, f"vectors file {DIFFERS}"),
        (_damage_fewer_rows, f"vectors file {DIFFERS}"),
        (_damage_truncated, f"vectors file {DIFFERS}"),
        (_damage_index, r"index unreadable \("),
        (_damage_values, f"vectors file {DIFFERS}"),
        (_damage_dtype, f"vectors file {DIFFERS}"),
        (_damage_keys_reordered, f"keys file {DIFFERS}"),
        (_damage_values_times_kept, f"vectors file {DIFFERS}"),
        (_damage_fifo, r"vectors file unreadable \(not a regular file\)"),
    ],
)
def test_a_damaged_store_shard_is_dropped_and_encoded_again_with_one_warning(
    tmp_path, counting_encoder, caplog, damage, warning
):
    config, dataset, features, npy, meta = _cached(tmp_path, counting_encoder)
    damage(npy, meta)
    with caplog.at_level(logging.WARNING, logger="recbole_srt.store"):
        rebuilt = load_item_features(config, dataset).numpy()
    (record,) = caplog.records
    assert record.levelname == "WARNING" and record.getMessage().endswith("; re-encoding")
    assert re.search(warning, record.getMessage()), record.getMessage()
    assert counting_encoder == [30, 30]  # encoded again, once
    np.testing.assert_array_equal(rebuilt, features)
    caplog.clear()
    load_item_features(config, dataset)  # the store is whole again: a silent hit
    assert counting_encoder == [30, 30] and not caplog.records


def test_a_shard_touched_but_intact_is_checked_once_and_kept(tmp_path, counting_encoder, caplog, monkeypatch):
    config, dataset, features, npy, meta = _cached(tmp_path, counting_encoder)
    npy.write_bytes(npy.read_bytes())  # a copy without its times (cp without -p): same bytes, new mtime
    with caplog.at_level(logging.WARNING, logger="recbole_srt.store"):
        np.testing.assert_array_equal(load_item_features(config, dataset).numpy(), features)
    assert counting_encoder == [30] and not caplog.records
    found = npy.stat()
    assert json.loads(meta.read_text())["vectors"]["stat"] == [
        found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino
    ]  # fmt: skip
    # untouched since: opened again without reading either file in full
    monkeypatch.setattr(hashlib, "file_digest", lambda *a: pytest.fail("hashed an untouched shard"))
    np.testing.assert_array_equal(load_item_features(config, dataset).numpy(), features)


def test_an_index_of_the_previous_version_is_hashed_once_not_encoded_again(tmp_path, counting_encoder):
    config, dataset, features, npy, meta = _cached(tmp_path, counting_encoder)
    index = json.loads(meta.read_text())
    old = {"shape": index["shape"], "dtype": index["dtype"], "vectors_stat": [1, 2]}
    old |= {f"{part}_sha256": index[part]["sha256"] for part in ("keys", "vectors")}
    meta.write_text(json.dumps(old))
    np.testing.assert_array_equal(load_item_features(config, dataset).numpy(), features)
    assert counting_encoder == [30] and json.loads(meta.read_text())["keys"] == index["keys"]


def faked(name: str, cache_dir: Path) -> ItemEncoder:
    """``ItemEncoder(name)`` whose model is :func:`fake_encoding` of its name and the text."""
    encoder = ItemEncoder(name, cache_dir=cache_dir)
    encoder._model = SimpleNamespace(encode=lambda texts, **kw: fake_encoding([name + t for t in texts]))
    return encoder


def shard_of(folder: Path, texts: list[str]) -> str:
    """The name of the shard of the store ``folder`` that holds ``texts``, in that order."""
    (name,) = [
        p.name.split(".")[0] for p in folder.glob("*.keys.npy") if np.array_equal(np.load(p), digests(texts))
    ]
    return name


def test_swapped_or_foreign_shard_files_are_never_served(tmp_path, caplog):
    """Two shards of the same size with their keys files swapped, and a vectors file replaced by another
    encoder's of the same size with its modification time kept: each text gets its own vector (encoded
    again), never another's."""
    first, second = [f"a{i}" for i in range(5)], [f"b{i}" for i in range(5)]
    encoder = faked("enc", tmp_path)
    truth = [encoder.vectors(texts).copy() for texts in (first, second)]
    folder = encoder.store.folder
    a, b = (folder / f"{shard_of(folder, texts)}.keys.npy" for texts in (first, second))
    a.rename(tmp_path / "swap")
    b.rename(a)
    (tmp_path / "swap").rename(b)
    with caplog.at_level(logging.WARNING, logger="recbole_srt.store"):
        for texts, vectors in zip((first, second), truth, strict=True):
            np.testing.assert_array_equal(faked("enc", tmp_path).vectors(texts), vectors)
    assert caplog.text.count(f"keys file {DIFFERS}") == 2

    other = faked("other", tmp_path)
    other.vectors(first)
    mine = folder / f"{shard_of(folder, first)}.vectors.npy"
    theirs = other.store.folder / f"{shard_of(other.store.folder, first)}.vectors.npy"
    found = mine.stat()
    mine.write_bytes(theirs.read_bytes())
    os.utime(mine, ns=(found.st_atime_ns, found.st_mtime_ns))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recbole_srt.store"):
        np.testing.assert_array_equal(faked("enc", tmp_path).vectors(first), truth[0])
    assert f"vectors file {DIFFERS}" in caplog.text


def test_a_shard_with_an_unreadable_index_leaves_no_file(tmp_path, counting_encoder, caplog):
    _, _, _, npy, meta = _cached(tmp_path, counting_encoder)
    meta.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="recbole_srt.store"):
        VectorStore(npy.parent)
    assert "index unreadable" in caplog.text and not list(npy.parent.iterdir())


def test_an_unwritable_store_is_one_clear_error(tmp_path, counting_encoder, monkeypatch):
    write_tiny_dataset(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    config, dataset = recbole_dataset(tmp_path, feature_cache_dir=str(tmp_path / "a-file"))
    with pytest.raises(ValueError, match=r"cannot write the item feature store .*; set feature_cache_dir"):
        load_item_features(config, dataset)


def test_store_files_have_the_users_umask_and_no_temporary_file_stays(tmp_path, counting_encoder):
    old = os.umask(0o027)
    try:
        _, _, _, npy, meta = _cached(tmp_path, counting_encoder)
    finally:
        os.umask(old)
    for path in npy.parent.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
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
    with caplog.at_level(logging.WARNING, logger="recbole_srt.catalog"):
        load_item_features(config, dataset)
    assert "6 of 30 items (20.0 %) have no text in fields ['title', 'brand']" in caplog.text


def test_the_token_cap_takes_none_for_the_encoders_own_limit_and_refuses_text(tmp_path):
    from recbole_srt.checks import check_config_before_data
    from recbole_srt.pipeline import make_config

    write_tiny_dataset(tmp_path)
    check_config_before_data(
        make_config("SRT", "tiny", config_dict=tiny_config(tmp_path, text_max_tokens=None))
    )
    with pytest.raises(ItemFeatureError, match="text_max_tokens must be a positive integer, got 'abc'"):
        check_config_before_data(
            make_config("SRT", "tiny", config_dict=tiny_config(tmp_path, text_max_tokens="abc"))
        )


def test_an_encoder_that_cannot_be_loaded_is_one_error(tmp_path: Path) -> None:
    code = (
        "from recbole_srt.encoder import ItemEncoder\n"
        f"ItemEncoder('no-such-org/no-such-encoder', cache_dir={str(tmp_path)!r}).model"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no network retries: the hub is not reachable here anyway
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith(
        "recbole_srt.catalog.ItemFeatureError: text_encoder 'no-such-org/no-such-encoder' is neither a "
        "model folder nor loadable from the hub: "
    ), done.stderr
