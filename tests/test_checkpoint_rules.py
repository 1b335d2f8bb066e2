"""What a checkpoint may carry and how it is read: no places or model folders from the file, settings of the
right type, finite weights and scores, files that are no regular files. Each case is a real checkpoint
(one epoch on ``tiny``) edited the way a user's file could be, read by srt-recommend, srt-finetune and
RecBole's own ``load_data_and_model``."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import Payload, tiny_config, write_tiny_dataset
from recbole.quick_start import load_data_and_model

from recbole_srt import serve, transfer
from recbole_srt.checkpoint import LOCATION_KEYS, CheckpointError, load_srt_checkpoint
from recbole_srt.encoder import ItemEncoder
from recbole_srt.pipeline import run

HISTORY = ["i1", "i2", "i3"]


def edited(good: Path, folder: Path, edit, name: str = "edited.pth") -> Path:
    """A copy of ``good`` changed by ``edit(raw)`` (raw: the dict torch.load reads)."""
    raw = torch.load(good, weights_only=True)
    edit(raw)
    torch.save(raw, folder / name)
    return folder / name


def set_config(**values):
    return lambda raw: raw["config"].update(values)


def recommend(checkpoint: Path, root: Path, *extra: str) -> int:
    catalog = root / "tiny" / "tiny.item"
    return serve.main([f"--checkpoint={checkpoint}", f"--catalog={catalog}", "--history", *HISTORY, *extra])


def finetune(checkpoint: Path, root: Path, *extra: str) -> int:
    return transfer.main(
        [f"--checkpoint={checkpoint}", "--dataset=tiny", f"--data_path={root}",
         f"--config_files={root / 'tiny' / 'tiny.yaml'}", f"--checkpoint_dir={root / 'tuned'}", *extra]
    )  # fmt: skip


def one_error(capsys, prog: str) -> str:
    out, err = capsys.readouterr()
    # the encoder library's progress bar ("Loading weights") may precede it, on the same stream
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Loading weights")]
    assert out == "" and len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), (out, err)
    return lines[0].removeprefix(f"{prog}: error: ")


@pytest.fixture
def no_encoding(monkeypatch):
    monkeypatch.setattr(ItemEncoder, "encode", lambda *a, **k: pytest.fail("encoded before the error"))


# --- places: a checkpoint carries none, and a reader takes none from a file ------------------------


def test_a_checkpoint_is_written_without_places(trained):
    good, _ = trained
    config = torch.load(good, weights_only=True)["config"]
    assert not set(LOCATION_KEYS) & config.keys()
    assert config["text_encoder"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_places_in_a_checkpoint_are_ignored_by_srt_recommend(trained, tmp_path, capsys, monkeypatch):
    good, root = trained
    elsewhere = tmp_path / "elsewhere"
    places = {key: str(elsewhere / key) for key in LOCATION_KEYS if key != "item_feature_file"}
    checkpoint = edited(good, tmp_path, set_config(**places))
    store = tmp_path / "my-store"
    monkeypatch.setenv("RECBOLE_SRT_CACHE", str(store))
    assert recommend(checkpoint, root, "--json") == 0
    assert not elsewhere.exists()  # nothing read or written where the file said
    assert list(store.glob("vectors/*/*.json"))  # the user's store


def test_a_checkpoints_encoder_folder_is_never_loaded(trained, tmp_path, capsys, no_encoding, monkeypatch):
    good, root = trained
    folder = tmp_path / "models" / "my-encoder"
    folder.mkdir(parents=True)
    absolute = edited(good, tmp_path, set_config(text_encoder=str(folder)), "absolute.pth")
    assert recommend(absolute, root) == 2
    assert one_error(capsys, "srt-recommend") == (
        f"{absolute}: the checkpoint's text_encoder is a local folder 'my-encoder' (a folder where it was "
        "trained, or here), and a checkpoint never chooses a folder to load: name the encoder yourself "
        "(srt-recommend --text-encoder FOLDER, srt-finetune --text_encoder=FOLDER)"
    )
    assert finetune(absolute, root) == 2
    assert "local folder 'my-encoder'" in one_error(capsys, "srt-finetune")
    # a model name that is also a folder here is not loaded from the folder on the file's word
    monkeypatch.chdir(tmp_path)
    relative = edited(good, tmp_path, set_config(text_encoder="models/my-encoder"), "relative.pth")
    assert recommend(relative, root) == 2
    assert one_error(capsys, "srt-recommend").startswith(
        f"{relative}: the checkpoint's text_encoder is a local folder 'models/my-encoder' (a folder where it "
        "was trained, or here)"
    )
    # the user names an encoder of another name: both are named
    assert recommend(absolute, root, "--text-encoder", str(tmp_path / "other-encoder")) == 2
    assert one_error(capsys, "srt-recommend").endswith(
        f"the checkpoint was trained on features of text_encoder \"local folder 'my-encoder'\"; "
        f"'{tmp_path / 'other-encoder'}' would feed it features it has never seen. Use the same encoder."
    )


def test_the_user_names_a_folder_of_the_checkpoints_encoder(trained, tmp_path, capsys):
    """A local copy of the encoder the checkpoint names serves it (its store is its own)."""
    good, root = trained
    from recbole_srt.encoder import resolve_encoder

    copy = tmp_path / "all-MiniLM-L6-v2"
    copy.symlink_to(resolve_encoder("all-MiniLM-L6-v2"))
    saved = load_srt_checkpoint(good, settings={"text_encoder": str(copy)})
    assert saved["config"]["text_encoder"] == str(copy)
    with pytest.raises(CheckpointError, match="'sentence-transformers/all-mpnet-base-v2' would feed it"):
        load_srt_checkpoint(good, settings={"text_encoder": "sentence-transformers/all-mpnet-base-v2"})


@pytest.mark.slow
def test_a_run_with_an_encoder_folder_records_its_name_and_is_served_with_it_named(
    tmp_path, capsys, monkeypatch
):
    """Trained (and tested, from its own checkpoint) with an encoder folder; served only with it named."""
    from recbole_srt.encoder import resolve_encoder

    folder = tmp_path / "my-minilm"
    folder.symlink_to(resolve_encoder("all-MiniLM-L6-v2"))
    write_tiny_dataset(tmp_path / "dataset")  # where RecBole's load_data_and_model looks
    config = tiny_config(
        tmp_path / "dataset", text_encoder=str(folder), checkpoint_dir=str(tmp_path / "saved")
    )
    record = run("SRT", "tiny", config_dict=config).record
    assert record.test  # the best checkpoint read back for the test: its weights need no encoder
    checkpoint = Path(record.checkpoint)
    assert torch.load(checkpoint, weights_only=True)["config"]["text_encoder"] == "local folder 'my-minilm'"
    assert recommend(checkpoint, tmp_path / "dataset") == 2
    assert "the checkpoint's text_encoder is a local folder 'my-minilm'" in one_error(capsys, "srt-recommend")
    assert recommend(checkpoint, tmp_path / "dataset", "--text-encoder", str(folder), "--json") == 0
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="the checkpoint's text_encoder is a local folder 'my-minilm'"):
        load_data_and_model(str(checkpoint))  # RecBole's loader takes no settings: it cannot name it


def test_recboles_loader_takes_no_path_or_pickle_from_a_checkpoint(trained, tmp_path):
    good, _ = trained
    marker, pickled = tmp_path / "code-ran", tmp_path / "evil.pkl"
    pickled.write_bytes(pickle.dumps(Payload(marker)))
    for key in ("dataset_save_path", "dataloaders_save_path"):
        checkpoint = edited(good, tmp_path, set_config(**{key: str(pickled)}), f"{key}.pth")
        with pytest.raises(Exception):  # noqa: B017  (the data is not where RecBole looks by default)
            load_data_and_model(str(checkpoint))
        assert not marker.exists()
    escape = edited(good, tmp_path, set_config(dataset="../../escape"), "escape.pth")
    with pytest.raises(
        CheckpointError, match=r"its config's dataset '\.\./\.\./escape' is not one plain name"
    ):
        load_data_and_model(str(escape))


# --- settings of the wrong type, non-finite weights and scores -----------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"MAX_ITEM_LIST_LENGTH": "10"}, "setting MAX_ITEM_LIST_LENGTH must be an integer, got '10'"),
        ({"temperature": float("nan")}, "setting temperature must be a finite number, got nan"),
        ({"train_neg_sample_args": "uniform"}, "its config does not describe an SRT model ("),
        ({"LIST_SUFFIX": 5}, "setting LIST_SUFFIX must be a field name (a string), got 5"),
        (
            {"n_layers": 200_000},
            "its config does not describe an SRT model (n_layers 200000 in its config, 1 ",
        ),
        ({"note": torch.zeros(10)}, "its config holds values that are no settings, e.g. tensors: ['note']"),
    ],
)
def test_a_checkpoint_setting_of_the_wrong_kind_is_one_line(
    trained, tmp_path, capsys, no_encoding, values, message
):
    good, root = trained
    checkpoint = edited(good, tmp_path, set_config(**values))
    assert recommend(checkpoint, root) == 2
    assert one_error(capsys, "srt-recommend").startswith(f"{checkpoint}: {message}")
    assert finetune(checkpoint, root) == 2
    assert one_error(capsys, "srt-finetune").startswith(f"{checkpoint}: {message}")


def scale(name: str, factor: float):
    return lambda raw: raw["state_dict"][name].mul_(factor)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            scale("blocks.0.ffn.0.weight", float("nan")),
            "its weights hold NaN or Inf: blocks.0.ffn.0.weight (",
        ),
        (
            scale("item_tower.net.0.bias", float("inf")),
            "its weights hold NaN or Inf: item_tower.net.0.bias (",
        ),
        (
            scale("item_tower.feature_std", 0.0),
            "its weights hold 384 feature scales <= 0 (item_tower.feature_std)",
        ),
        (scale("item_tower.feature_std", -1.0), "its weights hold 384 feature scales <= 0"),
    ],
)
def test_non_finite_weights_are_refused_naming_the_tensor(
    trained, tmp_path, capsys, no_encoding, edit, message
):
    good, root = trained
    checkpoint = edited(good, tmp_path, edit)
    assert recommend(checkpoint, root) == 2
    assert one_error(capsys, "srt-recommend").startswith(f"{checkpoint}: {message}")
    assert finetune(checkpoint, root) == 2  # before a zero-shot result is computed or printed
    assert one_error(capsys, "srt-finetune").startswith(f"{checkpoint}: {message}")
    with pytest.raises(CheckpointError, match="its weights hold"):
        load_data_and_model(str(checkpoint))


def test_finite_weights_that_overflow_give_no_ranking(trained, tmp_path, capsys):
    good, root = trained
    checkpoint = edited(
        good, tmp_path, lambda raw: [scale(f"final_norm.{p}", 3e38)(raw) for p in ("weight", "bias")]
    )
    assert recommend(checkpoint, root) == 2
    assert one_error(capsys, "srt-recommend").startswith(
        "SRT's scores are NaN or Inf for 30 of 30 (sequence, item)"
    )
    assert finetune(checkpoint, root) == 2  # the zero-shot evaluation stops: no metric from NaN scores
    assert one_error(capsys, "srt-finetune").startswith("SRT's scores are NaN or Inf for ")


# --- files that are no regular files ---------------------------------------------------------------


def test_a_fifo_or_a_device_is_refused_without_reading_it(trained, tmp_path, capsys):
    _, root = trained
    fifo, zero = tmp_path / "fifo.pth", tmp_path / "zero.pth"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    for path, kind in ((fifo, "a FIFO"), (zero, "a device or other special file")):
        assert recommend(path, root) == 2
        assert one_error(capsys, "srt-recommend") == f"{path}: {kind}, not a checkpoint file"


def test_srt_recommend_refuses_k_0_before_loading(tmp_path, capsys):
    with pytest.raises(SystemExit):
        serve.main([f"--checkpoint={tmp_path / 'none.pth'}", "--catalog=x.item", "--history", "a", "-k", "0"])
    assert capsys.readouterr().err.endswith("error: -k must be at least 1, got 0\n")
