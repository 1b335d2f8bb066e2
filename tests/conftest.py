"""Shared fixtures: a tiny RecBole atomic dataset with item text, and SRT built from features alone."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

import recbole_srt  # noqa: F401  (registers SRT)
from recbole_srt.model.srt import SRT
from recbole_srt.registration import plugin_yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Encoded vectors go to one store per test session (the real encoder's; fake encoders get their own,
# see test_features.counting_encoder), inherited by the CLIs the tests start; never the user's own.
os.environ["RECBOLE_SRT_CACHE"] = tempfile.mkdtemp(prefix="recbole-srt-test-store-")

# The tensors in these tests are tiny: extra threads only add synchronisation (and oversubscribe a busy CPU).
torch.set_num_threads(1)

_COLOURS = ["red", "blue", "green", "black", "white", "silver"]
_THINGS = ["guitar strings", "microscope slide", "lab goggles", "pipette tips", "drum sticks", "beaker set"]


@pytest.fixture(autouse=True)
def _no_cli_overrides(monkeypatch):
    """RecBole's Config parses ``--key=value`` from ``sys.argv``; keep pytest's own flags out of it."""
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])


def write_tiny_dataset(
    root: Path,
    name: str = "tiny",
    n_users: int = 40,
    n_items: int = 30,
    seed: int = 0,
    items_without_text: int = 0,
) -> Path:
    """Write ``root/name/name.{inter,item,yaml}``: users with 6-12 time-ordered interactions, titles.

    The last ``items_without_text`` items get interactions but no ``.item`` row. ``name.yaml`` is the
    dataset's RecBole config (columns to load). Returns ``root/name``.
    """
    rng = random.Random(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user in range(n_users):
        items = rng.sample(range(n_items), rng.randint(6, 12))
        rows += [f"u{user}\ti{item}\t{rng.randint(1, 5)}\t{1000 * user + t}" for t, item in enumerate(items)]
    (folder / f"{name}.inter").write_text("\n".join(rows) + "\n")
    lines = ["item_id:token\ttitle:token_seq\tbrand:token\tprice:float"]
    for item in range(n_items - items_without_text):
        title = f"{_COLOURS[item % len(_COLOURS)]} {_THINGS[item % len(_THINGS)]} model {item}"
        lines.append(f"i{item}\t{title}\tbrand{item % 4}\t{item * 1.5}")
    (folder / f"{name}.item").write_text("\n".join(lines) + "\n")
    (folder / f"{name}.yaml").write_text("load_col:\n  inter: [user_id, item_id, rating, timestamp]\n")
    return folder


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path)


def tiny_config(data_root: Path, **overrides) -> dict:
    """``config_dict`` for a fast run of SRT on a dataset written by :func:`write_tiny_dataset`."""
    return {
        "data_path": str(data_root),
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "checkpoint_dir": str(data_root / "saved"),
        "hidden_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "n_heads": 2,
        "MAX_ITEM_LIST_LENGTH": 10,
        "train_batch_size": 64,
        "eval_batch_size": 64,
        "epochs": 1,
        "show_progress": False,
        "state": "WARNING",
        **overrides,
    }


def srt_defaults() -> dict:
    return yaml.safe_load(plugin_yaml("SRT").read_text())


def srt_test_config(**overrides) -> dict:
    """SRT's YAML defaults plus what RecBole's Config would add, for a model built without RecBole data."""
    return {
        **srt_defaults(),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length",
        "NEG_PREFIX": "neg_",
        "MAX_ITEM_LIST_LENGTH": 6,
        "device": torch.device("cpu"),
        "train_neg_sample_args": {"distribution": "none"},
        "hidden_size": 16,
        "inner_size": 32,
        "n_heads": 2,
        "neg_sample_num": 5,
        "train_rows": "prefixes",  # the hand computations train the last position of a row only
        **overrides,
    }


def make_srt(n_items: int, feature_size: int = 8, seed: int = 0, **overrides) -> SRT:
    """SRT over random frozen features for ``n_items`` ids (0 = padding), built without RecBole data."""
    torch.manual_seed(seed)
    features = torch.randn(n_items, feature_size)
    features[0] = 0
    counts = torch.bincount(torch.randint(1, n_items, (50,)), minlength=n_items)
    return SRT(srt_test_config(**overrides), item_features=features, item_counts=counts)


def make_batch(n_items: int, batch_size: int = 4, max_len: int = 6, seed: int = 0) -> dict:
    """A RecBole-like training batch: right-padded sequences, their lengths and next items."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (batch_size,), generator=g)
    seq = torch.randint(1, n_items, (batch_size, max_len), generator=g)
    seq[torch.arange(max_len) >= lengths.unsqueeze(1)] = 0
    return {
        "item_id_list": seq,
        "item_length": lengths,
        "item_id": torch.randint(1, n_items, (batch_size,), generator=g),
    }
