"""SRT's checkpoint format, and reading checkpoints without running code from them.

RecBole's trainer pickles its whole ``Config`` into every checkpoint, so unpickling one in full runs
whatever code a crafted file holds. With :mod:`recbole_srt.compat`, every RecBole trainer
(``SRTTrainer``, RecBole's own, any subclass) writes RecBole's checkpoint keys with weights-only-safe
values only (:func:`write_checkpoint`), so ``torch.load(path, weights_only=True)`` reads them:

======================  ==========================================================================
``format``              :data:`FORMAT`
``config``              the config's values, plain and JSON-able: ``torch.device`` -> ``"cpu"``,
                        RecBole's enums (``ModelType`` ...) -> their name
``config_types``        key -> ``"torch.device"`` or the enum's class name, to restore those values
``config_parameters``   RecBole's parameter categories (``Config.parameters``, used by its log)
``state_dict``,         as RecBole writes them
``optimizer``,
``other_parameter``,
``epoch``, ``cur_step``,
``best_valid_score``
======================  ==========================================================================

:func:`read_checkpoint` turns ``config`` back into a RecBole ``Config`` (RecBole's own loaders get
the same through :mod:`recbole_srt.compat`). A file in RecBole's full-pickle format (RecBole's own
trainer, SRT checkpoints written before this format) is never read: unpickling it can run
arbitrary code, and nothing here lets a file choose what runs.
"""

from __future__ import annotations

import enum
import pickle
import zipfile
from pathlib import Path

import torch
import yaml
from recbole.config import Config
from recbole.utils import enum_type

from recbole_srt.files import replacing
from recbole_srt.model.srt import SRT, check_config
from recbole_srt.overrides import check_setting_types
from recbole_srt.registration import plugin_yaml

FORMAT = "recbole-srt/1"
_ENUMS = {
    cls.__name__: cls
    for cls in vars(enum_type).values()
    if isinstance(cls, type) and issubclass(cls, enum.Enum) and cls is not enum.Enum
}
# Besides SRT.yaml's keys, what RecBole's SequentialRecommender reads from the config.
_SEQUENCE_KEYS = ("USER_ID_FIELD", "ITEM_ID_FIELD", "LIST_SUFFIX", "ITEM_LIST_LENGTH_FIELD", "NEG_PREFIX",
                  "MAX_ITEM_LIST_LENGTH", "train_neg_sample_args")  # fmt: skip
FEATURE_MEAN = "item_tower.feature_mean"


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint, or not one of an SRT model."""


def _plain(value, tensors: bool = False) -> bool:
    """Whether ``value`` is made of None, bool, int, float, str, lists and dicts (and tensors if asked)."""
    if value is None or isinstance(value, bool | int | float | str) or (tensors and torch.is_tensor(value)):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v, tensors) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str | int) and _plain(v, tensors) for k, v in value.items())
    return False


def encode_config(config: Config) -> tuple[dict, dict[str, str]] | None:
    """``(values, types)`` of :data:`FORMAT`; ``None`` if a value is neither plain, a device nor one of
    RecBole's enums."""
    values, types = {}, {}
    for key, value in config.final_config_dict.items():
        if isinstance(value, torch.device):
            values[key], types[key] = str(value), "torch.device"
        elif isinstance(value, enum.Enum) and _ENUMS.get(type(value).__name__) is type(value):
            values[key], types[key] = value.name, type(value).__name__
        elif _plain(value):
            values[key] = value
        else:
            return None
    return values, types


def decode_config(values: dict, types: dict, parameters: dict) -> Config:
    """A RecBole ``Config`` holding ``values``, with the devices and enums named by ``types`` restored."""
    final = dict(values)
    for key, kind in types.items():
        try:
            final[key] = torch.device(final[key]) if kind == "torch.device" else _ENUMS[kind][final[key]]
        except (KeyError, RuntimeError, TypeError) as error:
            raise CheckpointError(f"config value {key}={final.get(key)!r} ({kind}): {error}") from None
    config = Config.__new__(Config)
    config.final_config_dict, config.parameters = final, parameters
    config.model, config.dataset = final.get("model"), final.get("dataset")
    config.yaml_loader = config._build_yaml_loader()
    return config


def recbole_state(trainer, epoch: int) -> dict:
    """The keys RecBole 1.2.1's ``Trainer._save_checkpoint`` saves besides ``config`` (live tensors)."""
    return {
        "epoch": epoch,
        "cur_step": trainer.cur_step,
        "best_valid_score": float(trainer.best_valid_score),
        "state_dict": trainer.model.state_dict(),
        "other_parameter": trainer.model.other_parameter(),
        "optimizer": trainer.optimizer.state_dict(),
    }


def checkpoint_state(trainer, epoch: int) -> dict | None:
    """What RecBole's ``Trainer._save_checkpoint`` saves, in :data:`FORMAT`; ``None`` when the config or
    the model's ``other_parameter()`` holds something this format cannot."""
    encoded, state = encode_config(trainer.config), recbole_state(trainer, epoch)
    if encoded is None or not _plain(state["other_parameter"], tensors=True):
        return None
    values, types = encoded
    return {"format": FORMAT, "config": values, "config_types": types,
            "config_parameters": trainer.config.parameters, **state}  # fmt: skip


def write_checkpoint(state: dict, path: str | Path) -> None:
    """Save ``state`` to ``path``, replacing it atomically (a crash never leaves half a checkpoint)."""
    with replacing(path) as tmp:
        torch.save(state, tmp)  # pickle protocol 2: the weights-only unpickler reads no other


def _unreadable(path: Path, error: BaseException) -> CheckpointError:
    if not zipfile.is_zipfile(path):
        return CheckpointError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive)")
    reason = " ".join(str(error).split())[:200]
    return CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {reason})")


def read_checkpoint(path: str | Path, map_location=None) -> dict:
    """A checkpoint's dict, its ``config`` a RecBole ``Config``; raises :class:`CheckpointError`.

    Only :data:`FORMAT` is read, weights-only; RecBole's full-pickle format is refused unread.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not zipfile.is_zipfile(path):
            raise _unreadable(path, error) from None
        raise CheckpointError(
            f"{path}: a full-pickle checkpoint (RecBole's own format, or SRT's before {FORMAT}); not read, "
            "since unpickling it can run arbitrary code. Train it again with recbole-srt (weights-only)"
        ) from None
    except Exception as error:  # any other unreadable file: zip, EOF, storage errors
        raise _unreadable(path, error) from None
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= checkpoint.keys():
        raise CheckpointError(f"{path}: not a RecBole checkpoint (no 'config' and 'state_dict')")
    if checkpoint.get("format") == FORMAT:
        parts = [checkpoint.get(key) for key in ("config", "config_types", "config_parameters")]
        if not all(isinstance(part, dict) for part in parts):
            raise CheckpointError(f"{path}: a damaged {FORMAT} checkpoint (config, config_types, parameters)")
        try:
            checkpoint["config"] = decode_config(*parts)
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None
    else:  # a weights-only load never yields a Config: RecBole's own layout is not this format
        kind = type(checkpoint["config"]).__name__
        raise CheckpointError(f"{path}: not a RecBole checkpoint (its 'config' is a {kind})")
    return checkpoint


def load_srt_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """A checkpoint of an SRT model: ``{"config": Config, "state_dict": {...}, ...}``, tensors on ``device``.

    SRT's own format is read without unpickling anything (:func:`read_checkpoint`).
    SRT settings added after the checkpoint was written take their defaults (``SRT.yaml``).
    """
    checkpoint = read_checkpoint(path, device)
    config, state = checkpoint["config"], checkpoint["state_dict"]
    model = config["model"]
    if model != "SRT":
        raise CheckpointError(f"{path}: a {model} checkpoint; only SRT scores items from their text")
    missing = [key for key in _SEQUENCE_KEYS if key not in config]
    if missing:
        raise CheckpointError(f"{path}: its config lacks RecBole's settings {missing}")
    defaults = yaml.load(plugin_yaml("SRT").read_text(encoding="utf-8"), Loader=config.yaml_loader)
    for key, value in defaults.items():
        if key not in config:
            config[key] = value
    mean = state.get(FEATURE_MEAN) if isinstance(state, dict) else None
    if not torch.is_tensor(mean) or mean.ndim != 1:
        raise CheckpointError(f"{path}: its state_dict has no SRT item tower ({FEATURE_MEAN})")
    try:
        check_setting_types(config, defaults)
        check_config(config)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    with torch.device("meta"):  # the model its config describes, without memory or data
        model = SRT(config, item_features=torch.zeros(2, feature_size(state)))
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:300]
        raise CheckpointError(f"{path}: its weights do not fit the model of its config ({reason})") from None
    return checkpoint


def feature_size(state_dict: dict) -> int:
    """The feature width the checkpoint's item tower was trained on."""
    return state_dict[FEATURE_MEAN].shape[0]
