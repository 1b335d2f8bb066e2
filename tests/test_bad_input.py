"""Bad input to run_recbole, srt-finetune and srt-recommend: one line ``prog: error: ...``, exit 2,
no code run from a file, nothing encoded or written first, previous outputs intact.

Broken catalogs and datasets are derived in tmp_path from the real files of the slices in ``tests/data``.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SLICES, Payload, tiny_config, write_tiny_dataset
from recbole.config import Config

import recbole_srt.checks
from recbole_srt import cli, serve, transfer
from recbole_srt.checkpoint import FORMAT, encode_config, load_srt_checkpoint, write_checkpoint
from recbole_srt.encoder import ItemEncoder
from recbole_srt.pipeline import run

SCIENTIFIC_TEXT = SLICES / "scientific-unisrec" / "Scientific.text"
MAGAZINE = SLICES / "amazon2018-magazine-subscriptions" / "Magazine_Subscriptions.csv.gz"
FULL_PICKLE = (
    "a full-pickle checkpoint (RecBole's own format, or SRT's before recbole-srt/1); not read, since "
    "unpickling it can run arbitrary code. Train it again with recbole-srt (weights-only)"
)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if anything is encoded or a dataset is loaded."""

    def forbidden(*args, **kwargs):
        raise AssertionError("encoded or loaded data before the error")

    monkeypatch.setattr(ItemEncoder, "encode", forbidden)
    monkeypatch.setattr(recbole_srt.checks, "create_dataset", forbidden)


def one_error(capsys, prog: str) -> str:
    """The message of the one ``prog: error: ...`` line on stderr (nothing else there, nothing on stdout)."""
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, (out, err)
    assert err.startswith(f"{prog}: error: ")
    return err.strip().removeprefix(f"{prog}: error: ")


def sci_catalog(folder: Path, n: int = 40) -> Path:
    """The first ``n`` items of the real Scientific catalog as a RecBole ``.item`` file."""
    lines = SCIENTIFIC_TEXT.read_text(encoding="utf-8").splitlines()[: n + 1]
    catalog = folder / "sci.item"
    catalog.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return catalog


def recommend(checkpoint: Path, catalog: Path, *extra: str) -> int:
    return serve.main([f"--checkpoint={checkpoint}", f"--catalog={catalog}", "--history", *extra])


# --- checkpoints ----------------------------------------------------------------------------------


def test_a_crafted_checkpoint_runs_no_code(trained, tmp_path, capsys):
    good, root = trained
    marker, crafted = tmp_path / "code-ran", tmp_path / "crafted.pth"
    torch.save({"config": Payload(marker), "state_dict": {}}, crafted)
    catalog = sci_catalog(tmp_path)

    assert recommend(crafted, catalog, "B0000223SI") == 2
    assert one_error(capsys, "srt-recommend") == f"{crafted}: {FULL_PICKLE}"
    assert transfer.main([f"--checkpoint={crafted}", "--dataset=tiny", f"--data_path={root}"]) == 2
    assert one_error(capsys, "srt-finetune") == f"{crafted}: {FULL_PICKLE}"
    with pytest.raises(ValueError, match="a full-pickle checkpoint"):
        serve.Recommender.from_checkpoint(crafted, catalog)
    with pytest.raises(ValueError, match="a full-pickle checkpoint"):
        transfer.finetune(crafted, "tiny", config_dict=tiny_config(root))
    assert not marker.exists()
    # no flag opts in to unpickling: the old --trust-checkpoint is an unknown option, and nothing runs
    with pytest.raises(SystemExit):
        recommend(crafted, catalog, "B0000223SI", "--trust-checkpoint")
    assert "unrecognized arguments: --trust-checkpoint" in capsys.readouterr().err and not marker.exists()


def test_srts_checkpoint_is_weights_only_and_an_old_full_pickle_is_refused(trained, tmp_path, capsys):
    good, _ = trained
    raw = torch.load(good, weights_only=True)
    assert raw["format"] == FORMAT and json.loads(json.dumps(raw["config"]))["model"] == "SRT"
    assert stat_mode(good) == 0o666 & ~current_umask() and not list(good.parent.glob(".*.tmp"))
    old = tmp_path / "old.pth"  # RecBole's layout, its Config pickled: SRT checkpoints before this format
    keep = ("epoch", "cur_step", "best_valid_score", "state_dict", "other_parameter", "optimizer")
    torch.save({"config": load_srt_checkpoint(good)["config"], **{k: raw[k] for k in keep}}, old)
    catalog = sci_catalog(tmp_path)
    history = ["B0000223SI", "B0000223SK"]

    assert recommend(old, catalog, *history, "--json") == 2
    assert one_error(capsys, "srt-recommend") == f"{old}: {FULL_PICKLE}"
    assert recommend(good, catalog, *history, "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 10


def test_recboles_resume_reads_srts_format_and_refuses_a_crafted_file(trained, tmp_path):
    good, root = trained
    config = tiny_config(root, epochs=2, checkpoint_dir=str(tmp_path))
    copy = tmp_path / "resume.pth"  # RecBole's resume_checkpoint goes on saving into the resumed file
    copy.write_bytes(good.read_bytes())
    resumed = run("SRT", "tiny", config_dict=config, resume=str(copy))
    assert resumed.trainer.start_epoch == 1 and len(resumed.record.epochs) == 1
    marker, crafted = tmp_path / "code-ran", tmp_path / "crafted.pth"
    torch.save({"config": Payload(marker), "state_dict": {}}, crafted)
    with pytest.raises(ValueError, match="a full-pickle checkpoint"):
        run("SRT", "tiny", config_dict=config, resume=str(crafted))
    assert not marker.exists()


def test_a_failed_checkpoint_write_leaves_the_previous_file_whole(trained, tmp_path, monkeypatch):
    good, _ = trained
    target = tmp_path / "best.pth"
    target.write_bytes(good.read_bytes())
    state = torch.load(good, weights_only=True)

    def disk_full(obj, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(state, target)
    assert target.read_bytes() == good.read_bytes() and not list(tmp_path.glob(".*.tmp"))


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _variant(good: Path, folder: Path, name: str, edit) -> Path:
    """A copy of the good checkpoint (SRT's format) changed by ``edit(raw)``."""
    raw = torch.load(good, weights_only=True)
    edit(raw)
    path = folder / name
    torch.save(raw, path)
    return path


def _sasrec(folder: Path) -> Path:
    values, types = encode_config(
        Config(model="SASRec", dataset="tiny", config_dict={"data_path": str(folder)})
    )
    path = folder / "sasrec.pth"
    torch.save({"format": FORMAT, "config": values, "config_types": types, "config_parameters": {},
                "state_dict": {}}, path)  # fmt: skip
    return path


def _bad_checkpoints(good: Path, folder: Path) -> list[tuple[Path, str]]:
    names = ("minimal", "plain", "gz", "cut", "0")
    minimal, plain, garbage, truncated, empty = (folder / f"{name}.pth" for name in names)
    torch.save({"a": 1}, minimal)
    torch.save({"config": {"model": "SRT"}, "state_dict": {}}, plain)
    garbage.write_bytes(MAGAZINE.read_bytes()[:5000])  # a real file, but not a checkpoint
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty.write_bytes(b"")
    (folder / "folder.pth").mkdir()
    not_zip = "not a PyTorch checkpoint (torch.save writes a zip archive)"

    def set_config(key, value):
        return lambda raw: raw["config"].__setitem__(key, value)

    no_tower = _variant(
        good, folder, "no-tower.pth", lambda raw: raw["state_dict"].pop("item_tower.feature_mean")
    )
    no_field = _variant(good, folder, "no-field.pth", lambda raw: raw["config"].pop("ITEM_ID_FIELD"))
    text_heads = _variant(good, folder, "heads.pth", set_config("n_heads", "two"))
    wider = _variant(good, folder, "wider.pth", set_config("hidden_size", 32))
    bad_enum = _variant(good, folder, "enum.pth", set_config("MODEL_TYPE", "QUANTUM"))
    return [
        (minimal, "not a RecBole checkpoint (no 'config' and 'state_dict')"),
        (plain, "not a RecBole checkpoint (its 'config' is a dict)"),
        (garbage, not_zip),
        (truncated, not_zip),
        (empty, not_zip),
        (folder / "folder.pth", "a folder, not a checkpoint file"),
        (folder / "missing.pth", "no such checkpoint file"),
        (_sasrec(folder), "a SASRec checkpoint; only SRT scores items from their text"),
        (no_tower, "its state_dict has no SRT item tower (item_tower.feature_mean)"),
        (no_field, "its config lacks RecBole's settings ['ITEM_ID_FIELD']"),
        (text_heads, "setting n_heads must be an integer, got 'two'"),
        (wider, "its weights do not fit the model of its config (Error(s) in loading state_dict for SRT: "),
        (bad_enum, "config value MODEL_TYPE='QUANTUM' (ModelType): 'QUANTUM'"),
    ]


def test_a_file_that_is_not_a_usable_srt_checkpoint_is_one_line(trained, tmp_path, capsys, monkeypatch):
    good, _ = trained
    catalog = sci_catalog(tmp_path)
    monkeypatch.setattr(ItemEncoder, "encode", lambda *a: pytest.fail("encoded for a checkpoint that fails"))
    for path, message in _bad_checkpoints(good, tmp_path):
        assert recommend(path, catalog, "B0000223SI") == 2, path
        assert one_error(capsys, "srt-recommend").startswith(f"{path}: {message}"), path


def test_device_errors_come_before_the_checkpoint_is_read(tmp_path, capsys):
    catalog = sci_catalog(tmp_path)
    if not torch.cuda.is_available():
        assert recommend(tmp_path / "missing.pth", catalog, "x", "--device", "cuda") == 2
        assert (
            one_error(capsys, "srt-recommend") == "device cuda: CUDA is not available here; use --device cpu"
        )
    assert recommend(tmp_path / "missing.pth", catalog, "x", "--device", "banana") == 2
    assert one_error(capsys, "srt-recommend").startswith("unknown device 'banana' (Expected one of cpu, cuda")


# --- catalogs -------------------------------------------------------------------------------------


def _edit_line(path: Path, number: int, edit) -> Path:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _jsonl(catalog: Path) -> Path:
    rows = [line.split("\t") for line in catalog.read_text(encoding="utf-8").splitlines()[1:]]
    path = catalog.with_suffix(".jsonl")
    path.write_text(
        "\n".join(json.dumps({"item_id": i, "text": t}) for i, t in rows) + "\n", encoding="utf-8"
    )
    return path


def _bad_catalogs(folder: Path) -> list[tuple[Path, str]]:
    def fresh(name: str) -> Path:
        sub = folder / name
        sub.mkdir()
        return sci_catalog(sub)

    extra_tab = _edit_line(fresh("tab"), 7, lambda line: line + "\tstray")
    open_quote = _edit_line(fresh("quote"), 5, lambda line: line.replace("\t", '\t"', 1))
    latin1 = fresh("latin1")
    latin1.write_bytes(latin1.read_bytes().replace(b"PORTER-CABLE 740001201", b"PORTER-CABLE \xe9 740001201"))
    cut = _edit_line(_jsonl(fresh("cut")), 5, lambda line: line[:40])
    array = _edit_line(_jsonl(fresh("array")), 3, lambda line: json.dumps(list(json.loads(line).values())))
    no_id = _edit_line(_jsonl(fresh("noid")), 9, lambda line: json.dumps({"text": json.loads(line)["text"]}))
    tsv = fresh("tsv").with_suffix(".tsv")
    tsv.write_text(_edit_line(fresh("tsv2"), 4, lambda line: line + "\tstray").read_text(encoding="utf-8"))
    empty = folder / "empty" / "sci.item"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    return [
        (empty, "an empty file (no header line)"),
        (extra_tab, "line 7: 3 fields, the header has 2"),
        (
            open_quote,
            "line 5: a field opens a double quote that it does not close; RecBole's reader would read on "
            "into the next lines (unexpected end of data)",
        ),
        (latin1, "line 3: not utf-8 (invalid continuation byte)"),
        (cut, "line 5: not valid JSON (Unterminated string starting at)"),
        (array, "line 3: a JSON list, not an object"),
        (no_id, "line 9: no 'item_id'"),
        (tsv, "line 4: 3 fields, the header has 2"),
    ]


def test_a_malformed_catalog_line_names_the_file_and_line(trained, tmp_path, capsys):
    good, _ = trained
    for catalog, message in _bad_catalogs(tmp_path):
        assert recommend(good, catalog, "B0000223SI") == 2, catalog
        separator = ": " if message.startswith("an empty") else ", "
        assert one_error(capsys, "srt-recommend") == f"{catalog}{separator}{message}", catalog
        assert not list(catalog.parent.glob("*.srt-*"))  # refused before encoding: no cache written


def test_new_item_ids_and_a_whole_catalog_history_are_checked(trained, tmp_path, capsys):
    good, _ = trained
    catalog = sci_catalog(tmp_path)
    for new_items, ids in (
        (["", "a red kazoo"], "['']"),
        (["n1", "a", "--new-item", "n1", "b"], "['n1', 'n1']"),
    ):
        with pytest.raises(SystemExit):
            recommend(good, catalog, "B0000223SI", "--new-item", *new_items)
        assert capsys.readouterr().err.endswith(
            f"error: --new-item ids must be non-empty and distinct, got {ids}\n"
        )
    recommender = serve.Recommender.from_checkpoint(good, catalog)
    with pytest.raises(ValueError, match="an item id cannot be empty"):
        recommender.add_items({"": "a red kazoo"})
    with pytest.raises(ValueError, match="every catalog item is in the history"):
        recommender.recommend(recommender.item_ids, k=3)
    assert len(recommender.recommend(recommender.item_ids, k=3, exclude_history=False)) == 3


def test_a_catalog_without_text_is_refused_and_a_partly_empty_one_warns(trained, tmp_path, capsys, caplog):
    good, _ = trained
    catalog = sci_catalog(tmp_path)
    text = catalog.read_text(encoding="utf-8").splitlines()
    blank = [text[0], *(line.split("\t")[0] + "\t" for line in text[1:])]
    catalog.write_text("\n".join(blank) + "\n", encoding="utf-8")
    assert recommend(good, catalog, "B0000223SI") == 2
    assert one_error(capsys, "srt-recommend") == (
        f"catalog {catalog}: 40 of 40 items (100.0%) have no text in fields ['text'], so every item would "
        "get the same features; set text_fields to fields that hold text, or give item_feature_file "
        "(missing_text only decides what the few items without text get)"
    )
    catalog.write_text("\n".join([*text[:31], *blank[31:]]) + "\n", encoding="utf-8")
    assert recommend(good, catalog, "B0000223SI") == 0
    assert f"catalog {catalog}: 10 of 40 items (25.0 %) have no text in fields ['text']" in caplog.text


# --- run_recbole ----------------------------------------------------------------------------------

TINY_ARGS = ["--dataset=tiny", "--epochs=1", "--hidden_size=16", "--inner_size=32", "--n_layers=1",
             "--MAX_ITEM_LIST_LENGTH=10", "--show_progress=False", "--state=WARNING"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs=abc"], "setting epochs must be an integer, got 'abc'"),
        (["--epochs=2.5"], "setting epochs must be an integer, got 2.5"),
        (["--learning_rate=fast"], "setting learning_rate must be a number, got 'fast'"),
        (["--norm_first=maybe"], "setting norm_first must be a boolean (True or False), got 'maybe'"),
        (
            ["--model=SASRec", "--train_batch_size=big"],
            "setting train_batch_size must be an integer, got 'big'",
        ),
        (["--n_heads=3"], "hidden_size 16 is not a multiple of n_heads 3"),
        (["--n_heads=0"], "SRT n_heads must be at least 1, got 0"),
        (["--loss_type=XX"], "SRT loss_type must be one of ('CE', 'SSM', 'BPR'), got 'XX'"),
        (["--model=Nope"], "unknown model 'Nope'; did you mean Pop? (model names are case-sensitive)"),
        (["--model=sasrec"], "unknown model 'sasrec'; did you mean SASRec? (model names are case-sensitive)"),
        (["--dataset=nope"], None),
        (["--metrics=[Foo]"], "There is no metric named 'Foo'"),
        (
            ["--valid_metric=ndcg@20"],
            "valid_metric 'ndcg@20' is not computed; the results are "
            "['recall@10', 'mrr@10', 'ndcg@10', 'hit@10']",
        ),
        (["--hidden_dropout_prob=abc"], "SRT hidden_dropout_prob: dropout 'abc': need 1 values in [0, 1)"),
        (["--learner=adagrad"], "learner must be one of ('adam', 'adamw', 'sgd') for SRT, got 'adagrad'"),
        (
            ["--lr_scheduler=cosine"],
            "lr_scheduler must be one of ('constant', 'warmup_cosine', 'onecycle'), got 'cosine'",
        ),
        (["--precision=fp16"], "precision fp16 needs a CUDA device (GradScaler); use bf16 on CPU"),
        (["--epochs=0"], "setting epochs must be at least 1, got 0"),
        (["--checkpoint_dir=5"], "setting checkpoint_dir must be a path, got 5"),
        (["--feature_cache_dir=[a]"], "setting feature_cache_dir must be a path, got ['a']"),
        (["--checkpoint_dir=broken.yaml"], "setting checkpoint_dir: broken.yaml is a file, not a folder"),
        (
            ["--text_fields=title"],
            "SRT text_fields must be a list of .item field names ([title]), got 'title'",
        ),
        (["--text_encoder=5"], "SRT text_encoder must be a model name or folder, got 5"),
        (
            ["--config_files=broken.yaml"],
            "config file broken.yaml, line 2: not valid YAML (expected ',' or ']', but got '<stream end>')",
        ),
    ],
)
def test_run_recbole_refuses_bad_settings_before_loading_or_encoding(
    tmp_path, capsys, monkeypatch, no_work, args, message
):
    write_tiny_dataset(tmp_path)
    (tmp_path / "broken.yaml").write_text("epochs: [1\n")  # a YAML list left open
    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "previous.pth").write_bytes(b"a previous run's checkpoint")
    argv = [f"--config_files={tmp_path / 'tiny' / 'tiny.yaml'}", *TINY_ARGS, f"--data_path={tmp_path}"]
    assert cli.main([*argv, f"--checkpoint_dir={saved}", *args]) == 2
    if message is None:
        message = (
            f"no dataset folder {tmp_path / 'nope'}: 'nope' is neither a folder under data_path ({tmp_path}) "
            "nor a dataset RecBole can download; srt-prep writes one"
        )
    assert one_error(capsys, "run_recbole") == message
    assert [p.name for p in saved.iterdir()] == ["previous.pth"] and (
        saved / "previous.pth"
    ).read_bytes() == (b"a previous run's checkpoint")


def _magazine_dataset(root: Path, name: str, keep) -> tuple[Path, list[list[str]]]:
    """A RecBole dataset of the real Magazine_Subscriptions ratings that ``keep(rows)`` picks; its folder and
    those rows."""
    with gzip.open(MAGAZINE, "rt", encoding="utf-8") as f:
        rows = [line.split(",") for line in f.read().splitlines()]  # item, user, rating, time
    kept = keep(rows)
    folder = root / name
    folder.mkdir()
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{user}\t{item}\t{rating}\t{time}" for item, user, rating, time in kept]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    (folder / f"{name}.yaml").write_text("load_col:\n  inter: [user_id, item_id, rating, timestamp]\n")
    return folder, kept


def _users_with(n: int, limit: int | None = None):
    """Rows of the users with exactly ``n`` ratings (the first ``limit`` such users)."""

    def keep(rows):
        counts = Counter(user for _, user, _, _ in rows)
        users = [user for user in counts if counts[user] == n][:limit]
        return [row for row in rows if row[1] in set(users)]

    return keep


def _five_items(rows):
    top = {item for item, _ in Counter(item for item, _, _, _ in rows).most_common(5)}
    return [row for row in rows if row[0] in top]


SPLIT = "RecBole's split {'LS': 'valid_and_test'} leaves the"
TOO_FEW = "too few interactions per user; add data or keep longer histories (user_inter_num_interval)"


@pytest.mark.parametrize(
    ("keep", "args", "message"),
    [
        # {users} and {rows}: counted in the rows written, without exact duplicates
        (
            _users_with(2),
            [],
            f"{SPLIT} validation set empty ({{users}} users, {{rows}} interactions): {TOO_FEW}",
        ),
        (
            _users_with(3, limit=1),
            ["--topk=[1]", "--valid_metric=NDCG@1"],
            f"{SPLIT} validation set empty (1 users, 3 interactions): {TOO_FEW}",
        ),
        (
            _users_with(1, limit=1),
            ["--topk=[1]", "--valid_metric=NDCG@1"],
            f"{SPLIT} training set empty (1 users, 1 interactions): {TOO_FEW}",
        ),
        (_users_with(3, limit=1), [], "3 items, fewer than topk 10; set topk to at most 3"),
        (_five_items, [], "5 items, fewer than topk 10; set topk to at most 5"),
    ],
)
def test_a_dataset_too_small_to_split_or_rank_is_refused_before_training(
    tmp_path, capsys, monkeypatch, keep, args, message
):
    monkeypatch.setattr(ItemEncoder, "encode", lambda *a: pytest.fail("encoded before the error"))
    folder, rows = _magazine_dataset(tmp_path, "magazine", keep)
    distinct = {(user, item, time) for item, user, _, time in rows}  # exact duplicates are dropped on loading
    message = message.replace("{users}", str(len({row[1] for row in rows}))).replace(
        "{rows}", str(len(distinct))
    )
    argv = [
        *TINY_ARGS,
        "--dataset=magazine",
        f"--data_path={tmp_path}",
        f"--config_files={folder / 'magazine.yaml'}",
    ]
    assert cli.main([*argv, f"--checkpoint_dir={tmp_path / 'saved'}", *args]) == 2
    assert one_error(capsys, "run_recbole") == f"dataset magazine: {message}"
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"", "{inter}: empty file (an atomic file starts with its header line)"),
        (
            lambda data: data.replace(b"u1\t", b"\xe9\t", 1),  # a Latin-1 byte
            "dataset tiny: its .inter or .item file in {folder} is not utf-8 text "
            "(invalid continuation byte)",
        ),
    ],
    ids=["empty", "latin-1"],
)
def test_an_empty_or_undecodable_inter_file_is_one_line(tmp_path, capsys, damage, message) -> None:
    folder = write_tiny_dataset(tmp_path)
    inter = folder / "tiny.inter"
    inter.write_bytes(damage(inter.read_bytes()))
    argv = [*TINY_ARGS, f"--data_path={tmp_path}", f"--config_files={folder / 'tiny.yaml'}"]
    assert cli.main([*argv, f"--checkpoint_dir={tmp_path / 'saved'}"]) == 2
    assert one_error(capsys, "run_recbole") == message.format(inter=inter, folder=folder)


def test_a_dataset_read_without_its_time_column_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(ItemEncoder, "encode", lambda *a: pytest.fail("encoded before the error"))
    write_tiny_dataset(tmp_path)  # its tiny.yaml (load_col with the timestamp) is not passed
    assert cli.main([*TINY_ARGS, f"--data_path={tmp_path}", f"--checkpoint_dir={tmp_path / 'saved'}"]) == 2
    assert one_error(capsys, "run_recbole") == (
        "dataset tiny: its 'timestamp' column is not loaded, and the time-ordered split sorts by it; "
        "give the dataset's YAML (srt-prep writes tiny.yaml with its load_col) in config_files, or add the "
        "column to load_col"
    )
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            np.nan,
            "row 11 (0-based; item 'i11') holds NaN or Inf as float32 (1 of 30 rows); SRT cannot train on it",
        ),
        (None, "not a readable .npy array (Object arrays cannot be loaded when allow_pickle=False)"),
    ],
)
def test_a_bad_item_feature_file_is_refused_at_load_not_as_a_nan_loss(tmp_path, capsys, value, message):
    write_tiny_dataset(tmp_path)
    matrix = np.random.default_rng(0).normal(size=(30, 8)).astype(object if value is None else float)
    matrix[11, 3] = value
    np.save(tmp_path / "feats.npy", matrix, allow_pickle=True)
    argv = [*TINY_ARGS, f"--data_path={tmp_path}", f"--config_files={tmp_path / 'tiny' / 'tiny.yaml'}"]
    assert (
        cli.main([*argv, f"--checkpoint_dir={tmp_path}", f"--item_feature_file={tmp_path / 'feats.npy'}"])
        == 2
    )
    assert one_error(capsys, "run_recbole") == f"{tmp_path / 'feats.npy'}: {message}"


# --- srt-finetune ---------------------------------------------------------------------------------


STRATEGIES = "('full', 'freeze_projection', 'top_k_layers', 'progressive')"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--finetune_strategy=lora"], f"finetune_strategy must be one of {STRATEGIES}, got 'lora'"),
        (
            ["--finetune_strategy=progressive", "--epochs=1"],
            "progressive needs epochs > n_layers * progressive_epochs (1 * 1), got 1",
        ),
        (["--finetune_top_k=abc"], "setting finetune_top_k must be an integer, got 'abc'"),
        (["--epochs=abc"], "setting epochs must be an integer, got 'abc'"),
        (
            ["--finetune_learning_rate=fast"],
            "finetune_learning_rate for full must be a number or a list of 1 rates (one per stage), "
            "got 'fast'",
        ),
        (
            ["--finetune_learning_rate={full: {a: 1}}"],
            "finetune_learning_rate for full must be a number or a list of 1 rates (one per stage), "
            "got {'a': 1}",
        ),
        (["--loss_type=XX"], "SRT loss_type must be one of ('CE', 'SSM', 'BPR'), got 'XX'"),
        (
            ["--hidden_size=32"],
            "the architecture is fixed by the checkpoint; remove these overrides "
            "(hidden_size: checkpoint 16, requested 32)",
        ),
    ],
)
def test_srt_finetune_refuses_bad_settings_before_loading_or_encoding(
    trained, capsys, no_work, args, message
):
    good, root = trained
    dataset_yaml = root / "tiny" / "tiny.yaml"
    argv = [f"--checkpoint={good}", "--dataset=tiny", f"--data_path={root}", f"--config_files={dataset_yaml}"]
    assert transfer.main([*argv, *args]) == 2
    assert one_error(capsys, "srt-finetune") == message


@pytest.mark.parametrize(("value", "traceback"), [(None, False), ("", False), ("0", False), ("1", True)])
def test_srt_debug_shows_the_traceback_as_srt_prep_reads_it(monkeypatch, capsys, value, traceback) -> None:
    if value is None:
        monkeypatch.delenv("SRT_DEBUG", raising=False)
    else:
        monkeypatch.setenv("SRT_DEBUG", value)
    try:
        with cli.user_errors("run_recbole") as failed:
            raise ValueError("bad setting")
    except ValueError:
        assert traceback
    else:
        assert not traceback and failed and capsys.readouterr().err == "run_recbole: error: bad setting\n"


def test_ctrl_c_is_one_line_and_exit_130(capsys) -> None:
    with cli.user_errors("run_recbole") as failed:
        raise KeyboardInterrupt
    assert failed.status == 130 and capsys.readouterr().err == "run_recbole: interrupted\n"


def test_text_fields_missing_from_a_catalog_name_the_columns_it_has(trained, tmp_path, capsys):
    good, root = trained
    catalog = root / "tiny" / "tiny.item"
    argv = [f"--checkpoint={good}", f"--catalog={catalog}", "--history", "i1"]
    for text_fields in (["nope"], ["title", "nope"]):
        with pytest.raises(ValueError) as raised:
            serve.read_catalog(catalog, "item_id", text_fields)
        columns = ["item_id", "title", "brand", "price"]
        assert str(raised.value) == f"{catalog}: text fields {text_fields} not usable; the file has {columns}"
    assert serve.main(argv) == 0  # the checkpoint's own fields are there
    capsys.readouterr()


@pytest.mark.slow
def test_a_rank_that_dies_is_one_line_naming_it(tmp_path):
    """run_recbole --nproc=2 on the CPU (gloo); one rank is killed mid-run: one line naming the rank and how
    it exited, not torch's ProcessExitedException traceback."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    write_tiny_dataset(tmp_path)
    import socket

    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    argv = [*TINY_ARGS, "--nproc=2", f"--port={port}", "--epochs=200", "--stopping_step=1000"]
    argv += [f"--data_path={tmp_path}", f"--config_files={tmp_path / 'tiny' / 'tiny.yaml'}"]
    argv += [f"--checkpoint_dir={tmp_path / 'saved'}"]
    code = f"import sys; from recbole_srt.cli import main; sys.exit(main({argv!r}))"
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    ranks, deadline = [], time.time() + 120
    while len(ranks) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
        children = psutil.Process(process.pid).children()
        ranks = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    assert len(ranks) == 2, "the two ranks never started"
    time.sleep(3)  # both are in the run
    victim = ranks[1]
    victim.send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("run_recbole")]
    assert process.returncode == 2 and "Traceback" not in err, err[-2000:]
    assert (
        len(lines) == 1
        and lines[0].startswith("run_recbole: error: rank ")
        and lines[0].endswith(
            f"(pid {victim.pid}) exited with code -9 (SIGKILL); the other ranks were stopped (the best "
            "checkpoint so far is whole)"
        )
    ), err[-2000:]


@pytest.mark.parametrize("name", ["tiny-SRTDataset.pth", "tiny-for-SRT-dataloader.pth"])
def test_recboles_pickled_datasets_are_never_read(tmp_path, capsys, name):
    """RecBole unpickles a saved dataset or dataloaders it finds in checkpoint_dir: refused unread."""
    import pickle

    write_tiny_dataset(tmp_path)
    saved, marker = tmp_path / "saved", tmp_path / "code-ran"
    saved.mkdir()
    (saved / name).write_bytes(pickle.dumps(Payload(marker)))
    argv = [*TINY_ARGS, f"--data_path={tmp_path}", f"--config_files={tmp_path / 'tiny' / 'tiny.yaml'}"]
    assert cli.main([*argv, f"--checkpoint_dir={saved}"]) == 2
    assert one_error(capsys, "run_recbole") == (
        f"{saved / name}: a pickled RecBole dataset or dataloaders (save_dataset, save_dataloaders); not "
        "read, since unpickling it can run arbitrary code. Move it away: the dataset is built from its "
        "atomic files"
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    ("key", "what"), [("save_dataset", "the dataset"), ("save_dataloaders", "the split dataloaders")]
)
def test_recboles_pickle_saving_is_refused_before_loading(tmp_path, capsys, no_work, key, what):
    argv = [*TINY_ARGS, f"--data_path={tmp_path}", f"--checkpoint_dir={tmp_path / 'saved'}", f"--{key}=True"]
    assert cli.main(argv) == 2
    assert one_error(capsys, "run_recbole") == (
        f"setting {key}: RecBole saves {what} as a pickle, which is never read back here (unpickling can run "
        "arbitrary code); the dataset is built from its atomic files each run"
    )
