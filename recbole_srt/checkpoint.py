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

**A checkpoint carries weights and model settings, never places** (:func:`checkpoint_config`, applied by
the writer and by every reader): the settings of :data:`LOCATION_KEYS` (where data is read, where outputs,
caches and RecBole's pickles go) are left out when writing and, whatever a file holds, taken from the
reader's own settings when reading (else the defaults of a run given none); ``item_feature_file`` keeps
only the fact that features were precomputed; ``text_encoder`` keeps a model name, or the name of a
folder it was loaded from, never a path (:func:`recbole_srt.encoder.encoder_for_checkpoint` decides what a
reader loads). The settings of :data:`NAME_KEYS` become parts of file names and must be one plain name
each. Every setting whose default is a number or a boolean must hold a finite one; the weights must be
finite, and an SRT checkpoint's config must build the model its weights fit, all before anything is
encoded.
"""

from __future__ import annotations

import enum
import functools
import pickle
import re
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
from recbole.config import Config
from recbole.utils import enum_type

from recbole_srt.catalog import ItemFeatureError
from recbole_srt.encoder import encoder_for_checkpoint, recorded_encoder
from recbole_srt.files import replacing
from recbole_srt.model.srt import ITEM_ID_TABLE, SRT, check_config
from recbole_srt.overrides import check_setting_types
from recbole_srt.registration import TRANSFER_YAML, plugin_yaml

FORMAT = "recbole-srt/1"
_ENUMS = {
    cls.__name__: cls
    for cls in vars(enum_type).values()
    if isinstance(cls, type) and issubclass(cls, enum.Enum) and cls is not enum.Enum
}
# Besides SRT.yaml's keys, what RecBole's SequentialRecommender reads from the config.
_SEQUENCE_KEYS = ("USER_ID_FIELD", "ITEM_ID_FIELD", "LIST_SUFFIX", "ITEM_LIST_LENGTH_FIELD", "NEG_PREFIX",
                  "MAX_ITEM_LIST_LENGTH", "train_neg_sample_args")  # fmt: skip
_FIELD_KEYS = _SEQUENCE_KEYS[:5]  # the field names and affixes SRT's inputs are named by
FEATURE_MEAN, FEATURE_STD = "item_tower.feature_mean", "item_tower.feature_std"
# Settings that are places on a machine: where data is read, where outputs, caches and RecBole's pickled
# datasets and loaders are written. Never carried by a checkpoint (see the module docstring).
LOCATION_KEYS = ("data_path", "checkpoint_dir", "feature_cache_dir", "item_feature_file", "dataset_save_path",
                 "dataloaders_save_path")  # fmt: skip
# What a checkpoint keeps of an item_feature_file: that the features were precomputed, not where they lay.
PRECOMPUTED = "<an item_feature_file; checkpoints keep no paths>"
# Settings that become parts of file and folder names (data_path/<dataset>/<dataset>.<suffix>.inter,
# ./log/<model>/<model>-<dataset>-...): one plain name each (or a list of them).
NAME_KEYS = ("model", "dataset", "benchmark_filename", "additional_feat_suffix")


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


def checkpoint_config(values: Mapping) -> dict:
    """The settings a checkpoint carries of a run's config ``values``: no :data:`LOCATION_KEYS`, an
    ``item_feature_file`` as :data:`PRECOMPUTED`, ``text_encoder`` as
    :func:`~recbole_srt.encoder.recorded_encoder` records it. The one rule of what a checkpoint may carry:
    the writer applies it, and so does every reader to whatever a file holds."""
    kept = {key: value for key, value in values.items() if key not in LOCATION_KEYS}
    if values.get("item_feature_file") is not None:
        kept["item_feature_file"] = PRECOMPUTED
    if isinstance(values.get("text_encoder"), str):
        kept["text_encoder"] = recorded_encoder(values["text_encoder"])
    return kept


def _plain_name(value: object) -> bool:
    """One file or folder name: a non-empty string without a path separator, not ``.`` or ``..``."""
    return isinstance(value, str) and value not in ("", ".", "..") and not {"/", "\\", "\0"} & set(value)


def _check_names(values: Mapping) -> None:
    for key in NAME_KEYS:
        value = values.get(key)
        names = value if isinstance(value, list) and key not in ("model", "dataset") else [value]
        if (value is not None or key in ("model", "dataset")) and not all(map(_plain_name, names)):
            raise CheckpointError(f"its config's {key} {value!r} is not one plain name (it names files)")


def encode_config(config: Config) -> tuple[dict, dict[str, str]] | None:
    """``(values, types)`` of :data:`FORMAT`, the settings :func:`checkpoint_config` keeps; ``None`` if a
    value is neither plain, a device nor one of RecBole's enums."""
    values, types = {}, {}
    for key, value in checkpoint_config(config.final_config_dict).items():
        if isinstance(value, torch.device):
            values[key], types[key] = str(value), "torch.device"
        elif isinstance(value, enum.Enum) and _ENUMS.get(type(value).__name__) is type(value):
            values[key], types[key] = value.name, type(value).__name__
        elif _plain(value):
            values[key] = value
        else:
            return None
    return values, types


@functools.lru_cache(maxsize=8)
def run_defaults(model: str, dataset: str) -> tuple[dict, dict]:
    """``(defaults, final)`` of a run of ``model`` on ``dataset`` given no settings: the YAML defaults
    (RecBole's ``internal_config_dict``, the plugin's YAML and, for plugin models, the fine-tuning YAML)
    and the config RecBole makes of them (``data_path`` joined with the dataset, ...), without building a
    ``Config`` (which would set up devices and ``CUDA_VISIBLE_DEVICES``)."""
    scratch = Config.__new__(Config)
    scratch._init_parameters_category()
    scratch.yaml_loader = scratch._build_yaml_loader()
    scratch.external_config_dict = {}
    try:
        scratch.model, scratch.model_class, scratch.dataset = scratch._get_model_and_dataset(model, dataset)
    except (ImportError, ValueError, AttributeError) as error:
        raise CheckpointError(f"its config's model {model!r} is no model RecBole knows ({error})") from None
    scratch._load_internal_config_dict(scratch.model, scratch.model_class, scratch.dataset)
    defaults = dict(scratch.internal_config_dict)
    if plugin_yaml(model).is_file():
        defaults.update(yaml.load(TRANSFER_YAML.read_text(encoding="utf-8"), Loader=scratch.yaml_loader))
    scratch.final_config_dict = dict(scratch.internal_config_dict)
    scratch._set_default_parameters()
    return defaults, scratch.final_config_dict


def decode_config(values: dict, types: dict, parameters: dict, settings: Mapping | None = None) -> Config:
    """A RecBole ``Config`` holding ``values``, with the devices and enums named by ``types`` restored.

    What :func:`checkpoint_config` leaves out comes from ``settings`` (the reader's own:
    :data:`LOCATION_KEYS`, ``text_encoder``), else from :func:`run_defaults`. A reader that will encode
    (``settings`` given) gets the recorded ``text_encoder`` resolved by
    :func:`~recbole_srt.encoder.encoder_for_checkpoint`; RecBole's own readers (``settings`` ``None``)
    keep the record, which :class:`~recbole_srt.encoder.ItemEncoder` refuses to load if it names a folder
    (resuming and testing need only the weights)."""
    _check_names(values)
    final = checkpoint_config(values)
    _, fresh = run_defaults(final["model"], final["dataset"])
    given = settings or {}
    final |= {key: given.get(key, fresh.get(key)) for key in LOCATION_KEYS if key != "item_feature_file"}
    encodes = settings is not None and final.get("item_feature_file") is None
    if encodes and isinstance(final.get("text_encoder"), str):
        try:
            final["text_encoder"] = encoder_for_checkpoint(final["text_encoder"], given.get("text_encoder"))
        except ItemFeatureError as error:
            raise CheckpointError(str(error)) from None
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


def _check_file(path: Path) -> None:
    """``path`` is a regular file (a FIFO or a device would be read forever, or block)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read it ({error.strerror})") from None
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"{path}: a folder, not a checkpoint file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device or other special file"
        raise CheckpointError(f"{path}: {kind}, not a checkpoint file")


def _check_weights(state: Mapping, path: Path) -> None:
    """Every floating tensor of ``state`` is finite, and SRT's feature scale positive: the one check of
    weights where they are loaded (NaN weights would score every item NaN)."""
    for name, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: its weights hold NaN or Inf: {name} ({bad} of {tensor.numel()} values); it cannot "
                "score items (training diverged, or the file was edited): use another checkpoint"
            )
    std = state.get(FEATURE_STD)
    if torch.is_tensor(std) and std.is_floating_point() and not (std > 0).all():
        raise CheckpointError(
            f"{path}: its weights hold {int((std <= 0).sum())} feature scales <= 0 ({FEATURE_STD}); the "
            "item tower divides by them: use another checkpoint"
        )


def read_checkpoint(path: str | Path, map_location=None, settings: Mapping | None = None) -> dict:
    """A checkpoint's dict, its ``config`` a RecBole ``Config``; raises :class:`CheckpointError`.

    Only :data:`FORMAT` is read, weights-only; RecBole's full-pickle format is refused unread. The
    config holds what :func:`checkpoint_config` keeps, the rest from ``settings`` (:func:`decode_config`);
    its settings and weights are checked (module docstring), an SRT checkpoint's by :func:`_check_srt`.
    """
    path = Path(path)
    _check_file(path)
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
    if checkpoint.get("format") != FORMAT:  # a weights-only load never yields a Config: RecBole's own layout
        kind = type(checkpoint["config"]).__name__
        raise CheckpointError(f"{path}: not a RecBole checkpoint (its 'config' is a {kind})")
    parts = [checkpoint.get(key) for key in ("config", "config_types", "config_parameters")]
    if not all(isinstance(part, dict) for part in parts) or not isinstance(checkpoint["state_dict"], dict):
        raise CheckpointError(f"{path}: a damaged {FORMAT} checkpoint (config, config_types, parameters)")
    odd = [key for key, value in parts[0].items() if not _plain({key: value})]
    if odd:
        raise CheckpointError(
            f"{path}: its config holds values that are no settings, e.g. tensors: {odd[:5]}"
        )
    try:
        config = checkpoint["config"] = decode_config(*parts, settings)
        defaults, _ = run_defaults(config["model"], config["dataset"])
        check_setting_types(config, defaults)
    except (CheckpointError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    _check_weights(checkpoint["state_dict"], path)
    if config["model"] == "SRT":
        _check_srt(config, checkpoint["state_dict"], path)
    return checkpoint


def _check_srt(config: Config, state: dict, path: Path) -> None:
    """An SRT checkpoint's config builds the model its weights fit (on the meta device: no memory, no
    data); SRT settings added after it was written take their defaults (``SRT.yaml``)."""
    missing = [key for key in _SEQUENCE_KEYS if key not in config]
    if missing:
        raise CheckpointError(f"{path}: its config lacks RecBole's settings {missing}")
    for key in _FIELD_KEYS:
        if not isinstance(config[key], str):
            raise CheckpointError(
                f"{path}: setting {key} must be a field name (a string), got {config[key]!r}"
            )
    defaults = yaml.load(plugin_yaml("SRT").read_text(encoding="utf-8"), Loader=config.yaml_loader)
    for key, value in defaults.items():
        if key not in config:
            config[key] = value
    mean = state.get(FEATURE_MEAN)
    if not torch.is_tensor(mean) or mean.ndim != 1:
        raise CheckpointError(f"{path}: its state_dict has no SRT item tower ({FEATURE_MEAN})")
    blocks = {key.split(".")[1] for key in state if re.match(r"blocks\.\d+\.", key)}
    try:
        check_config(config)
        if config["n_layers"] != len(blocks):  # before building: each block costs time, even on meta
            raise ValueError(f"n_layers {config['n_layers']} in its config, {len(blocks)} blocks of weights")
        table = state.get(ITEM_ID_TABLE)
        n_items = table.shape[0] if torch.is_tensor(table) and table.ndim == 2 else 2
        with torch.device("meta"):  # the model its config describes, without memory or data
            model = SRT(config, item_features=torch.zeros(n_items, feature_size(state)))
    except (ValueError, TypeError, KeyError, AttributeError) as error:  # settings a model cannot be built of
        raise CheckpointError(f"{path}: its config does not describe an SRT model ({error})") from error
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:300]
        raise CheckpointError(f"{path}: its weights do not fit the model of its config ({reason})") from None


def load_srt_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", settings: Mapping | None = None
) -> dict:
    """A checkpoint of an SRT model: ``{"config": Config, "state_dict": {...}, ...}``, tensors on ``device``.

    SRT's own format is read without unpickling anything, for a reader that encodes: its places and its
    encoder come from ``settings`` (the caller's own ``feature_cache_dir`` and ``text_encoder``, each
    optional; :func:`read_checkpoint`).
    """
    checkpoint = read_checkpoint(path, device, settings or {})
    model = checkpoint["config"]["model"]
    if model != "SRT":
        raise CheckpointError(f"{path}: a {model} checkpoint; only SRT scores items from their text")
    return checkpoint


def feature_size(state_dict: dict) -> int:
    """The feature width the checkpoint's item tower was trained on."""
    return state_dict[FEATURE_MEAN].shape[0]
