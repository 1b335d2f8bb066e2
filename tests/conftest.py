"""Shared fixtures: a tiny RecBole atomic dataset with item text, SRT built from features alone, and the real
data sets the preparation tests read.

Real data comes in two sizes. Small real slices of the three raw data sets ship in ``tests/data/`` (cut by
``tests/data/make_slices.py``), so every test runs on a bare clone. The full public files are read only
through the environment variable ``RECBOLE_SRT_TEST_DATA``: a folder laid out like ``tests/data/`` (one
sub-folder per data set, the files as their publishers ship them). Tests that recompute their expectations
from the raw files take the fixtures ``magazine``, ``music`` and ``scientific``, which run each such test on
the slice and, marked ``real_data``, on the full files; without the variable the full-data runs are skipped.
"""

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
SLICES = REPO / "tests" / "data"  # small real slices of the raw data sets, shipped with the tests
TEST_DATA_ENV = "RECBOLE_SRT_TEST_DATA"  # names a folder of the full public files, laid out like SLICES
MAGAZINE = "amazon2018-magazine-subscriptions"
MUSIC = "amazon2014-digital-music-truncated"
SCIENTIFIC = "scientific-unisrec"

# Encoded vectors go to one store per test session (the real encoder's; fake encoders get their own,
# see test_features.counting_encoder), inherited by the CLIs the tests start; never the user's own.
os.environ["RECBOLE_SRT_CACHE"] = tempfile.mkdtemp(prefix="recbole-srt-test-store-")

# The tensors in these tests are tiny: extra threads only add synchronisation (and oversubscribe a busy CPU).
torch.set_num_threads(1)

_COLOURS = ["red", "blue", "green", "black", "white", "silver"]
_THINGS = ["guitar strings", "microscope slide", "lab goggles", "pipette tips", "drum sticks", "beaker set"]


def full_data(name: str) -> Path:
    """The full public data set ``name``: ``$RECBOLE_SRT_TEST_DATA/name``; skips the test without it."""
    root = os.environ.get(TEST_DATA_ENV, "")
    if not root:
        pytest.skip(f"needs the full data set {name}: set {TEST_DATA_ENV} to the folder holding {name}/")
    folder = Path(root).absolute() / name
    if not folder.is_dir():
        pytest.skip(f"needs the full data set {name}: no folder {folder} (from {TEST_DATA_ENV}={root})")
    return folder


# The two sizes a real-data fixture runs a test on: the shipped slice, and the full files (marked real_data).
_SIZES = [pytest.param("slice", id="slice"), pytest.param("full", id="full", marks=pytest.mark.real_data)]


def _real_data(request: pytest.FixtureRequest, name: str) -> Path:
    return SLICES / name if request.param == "slice" else full_data(name)


@pytest.fixture(params=_SIZES)
def magazine(request) -> Path:
    """The folder of the 2018 Magazine_Subscriptions files (ratings CSV, metadata): slice, then full."""
    return _real_data(request, MAGAZINE)


@pytest.fixture(params=_SIZES)
def music(request) -> Path:
    """The folder of the 2014 Digital_Music 5-core reviews and metadata, both gzip streams cut off mid-way
    as published: slice, then full."""
    return _real_data(request, MUSIC)


@pytest.fixture(params=_SIZES)
def scientific(request) -> Path:
    """The folder of UniSRec's Scientific files (three splits, two indexes, item text): slice, then full."""
    return _real_data(request, SCIENTIFIC)


# Reads outside the clone: any file opened under the clone's parent folder but not inside the clone (a
# sibling folder, which a user's clone does not have), unless it lies in $RECBOLE_SRT_TEST_DATA or in the
# Python installation running the tests. Each test that makes one fails, naming the paths.
_PARENT, _OUTSIDE_READS = str(REPO.parent) + os.sep, []
_ALLOWED = [str(REPO) + os.sep, *{os.path.abspath(p) + os.sep for p in (sys.prefix, sys.base_prefix)}]


def _audit_opens(event: str, args: tuple) -> None:
    if event != "open" or not isinstance(args[0], str | bytes | os.PathLike):
        return
    path = os.path.abspath(os.fsdecode(args[0]))
    allowed = [
        *_ALLOWED,
        *([os.path.abspath(os.environ[TEST_DATA_ENV]) + os.sep] if os.environ.get(TEST_DATA_ENV) else []),
    ]
    if path.startswith(_PARENT) and not any(path.startswith(a) or path + os.sep == a for a in allowed):
        _OUTSIDE_READS.append(path)


sys.addaudithook(_audit_opens)


@pytest.fixture(autouse=True)
def _no_reads_outside_the_clone():
    """A test that reads a file beside the clone fails: a user's clone has nothing beside it."""
    del _OUTSIDE_READS[:]
    yield
    if _OUTSIDE_READS:
        pytest.fail(f"read outside the repository without ${TEST_DATA_ENV}: {sorted(set(_OUTSIDE_READS))}")


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


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: the code a crafted checkpoint can hold."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(an SRT checkpoint trained one epoch on ``tiny``, the data root), once per test module."""
    from recbole_srt.pipeline import run

    root = tmp_path_factory.mktemp("trained")
    write_tiny_dataset(root)
    record = run("SRT", "tiny", config_dict=tiny_config(root, checkpoint_dir=str(root / "saved"))).record
    return Path(record.checkpoint), root


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
