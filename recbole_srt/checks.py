"""Refuse bad settings and data before the expensive work (loading, encoding, training), in one line.

RecBole takes many bad inputs and fails much later with a traceback: ``--epochs=abc`` in its
training loop, an unknown model name with ``No module named 'lightgbm'``, a dataset too small to
split in its sampler or, after training, in its evaluator. :func:`recbole_srt.pipeline.make_config`
and :func:`recbole_srt.pipeline.run` check first:

* :func:`check_model_name`: a RecBole model or a plugin model (case-sensitive, as RecBole looks it up);
* :func:`check_config_files`: each ``config_files`` entry is a readable YAML mapping;
* :func:`config_errors`: what RecBole's ``Config()`` raises for bad settings is a :class:`SettingError`;
* :func:`check_setting_types`: a setting whose default is a number or a boolean holds one
  (an int is a number too); path settings hold paths, folders are no files, ``epochs`` is at least 1;
  ``valid_metric`` is one of the results RecBole computes;
* :func:`check_model_settings`: the model's own check (SRT: :func:`recbole_srt.model.srt.check_config`);
* :func:`load_dataset`: the dataset folder exists (or RecBole can download it), the time column is
  loaded for a time-ordered split, the catalog has at least ``max(topk)`` items, and RecBole's split
  leaves no evaluated part empty.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import urllib.error
from collections.abc import Iterator, Sequence
from pathlib import Path

import recbole
import torch
import yaml
from recbole.config import Config
from recbole.data import create_dataset
from recbole.utils import EvaluatorType

from recbole_srt.encoder import ItemEncoder
from recbole_srt.model.srt import check_config
from recbole_srt.optim import build_optimizer
from recbole_srt.overrides import SettingError, check_setting_types, read_config_file
from recbole_srt.registration import PLUGIN_MODELS, TRANSFER_YAML
from recbole_srt.trainer import training_precision

_RECBOLE = Path(recbole.__file__).parent
_MODEL_PACKAGES = ("general_recommender", "context_aware_recommender", "sequential_recommender",
                   "knowledge_aware_recommender", "exlib_recommender")  # fmt: skip


class DatasetError(ValueError):
    """A dataset that is missing, or that RecBole cannot split, sample or rank."""


def _recbole_model_names() -> list[str]:
    """Class names of RecBole's models (its importable model packages) and the plugin's."""
    names = set(PLUGIN_MODELS)
    for package in _MODEL_PACKAGES[:-1]:  # exlib_recommender needs lightgbm and xgboost
        module = importlib.import_module(f"recbole.model.{package}")
        names |= {name for name in dir(module) if name[0].isupper()}
    return sorted(names)


def check_model_name(model: str) -> None:
    """``model`` is a name RecBole's ``get_model`` finds; else :class:`SettingError` naming close ones."""
    if model in PLUGIN_MODELS:
        return
    for package in _MODEL_PACKAGES:
        if (_RECBOLE / "model" / package / f"{model.lower()}.py").is_file():
            try:
                module = importlib.import_module(f"recbole.model.{package}.{model.lower()}")
            except ModuleNotFoundError as error:
                raise SettingError(
                    f"model {model} needs the {error.name!r} package (not installed)"
                ) from None
            if hasattr(module, model):
                return
            break
    names = _recbole_model_names()
    close = [name for name in names if name.lower() == model.lower()]
    close = close or difflib.get_close_matches(model, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise SettingError(f"unknown model {model!r}{hint} (model names are case-sensitive)")


def check_model_settings(config: Config) -> None:
    """The model's own checks of its settings: for SRT, :func:`~recbole_srt.model.srt.check_config`,
    its trainer's precision and a dry run of its optimiser and schedule (one throw-away parameter)."""
    if config["model"] == "SRT":
        check_config(config)
        ItemEncoder.from_config(config)  # its options (nothing is loaded)
        training_precision(config)
        build_optimizer(config, [torch.nn.Parameter(torch.zeros(1))], config["learning_rate"])


def check_config_files(paths: Sequence[str | Path]) -> None:
    """Each config file is a readable YAML mapping (RecBole would fail with a YAML traceback)."""
    for path in paths:
        read_config_file(path)


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """RecBole's ``Config()`` raises these for bad settings (an unknown metric, ranking and value metrics
    mixed, a ``topk`` of the wrong type): a :class:`SettingError` instead."""
    try:
        yield
    except (NotImplementedError, RuntimeError, TypeError) as error:
        raise SettingError(str(error)) from None


def _check_valid_metric(config: Config) -> None:
    """``valid_metric`` is one of the results RecBole computes (else a ``KeyError`` after the first epoch)."""
    metrics = [metric.lower() for metric in config["metrics"]]
    if config["eval_type"] == EvaluatorType.RANKING:
        metrics = [f"{metric}@{k}" for metric in metrics for k in config["topk"]]
    if str(config["valid_metric"]).lower() not in metrics:
        raise SettingError(
            f"valid_metric {config['valid_metric']!r} is not computed; the results are {metrics}"
        )


def _check_paths_and_epochs(config: Config) -> None:
    """Path settings hold a path and folders are not files (RecBole would fail after loading and
    encoding); ``epochs`` is at least 1 (0 would evaluate and save an untrained model); nothing is saved
    as a pickle (``save_dataset``, ``save_dataloaders``)."""
    for key in ("checkpoint_dir", "feature_cache_dir", "item_feature_file"):
        value = config[key]
        if value is not None and not isinstance(value, str):
            raise SettingError(f"setting {key} must be a path, got {value!r}")
        if key.endswith("_dir") and value is not None and os.path.isfile(value):
            raise SettingError(f"setting {key}: {value} is a file, not a folder")
    if config["epochs"] < 1:
        raise SettingError(f"setting epochs must be at least 1, got {config['epochs']}")
    for key, what in (("save_dataset", "the dataset"), ("save_dataloaders", "the split dataloaders")):
        if config[key]:
            raise SettingError(
                f"setting {key}: RecBole saves {what} as a pickle, which is never read back here (unpickling "
                "can run arbitrary code); the dataset is built from its atomic files each run"
            )


def check_config_before_data(config: Config) -> None:
    """Every check of a freshly built ``config`` (see the module docstring)."""
    # the fine-tuning defaults (properties/transfer.yaml), parsed as RecBole parses YAML
    transfer = yaml.load(TRANSFER_YAML.read_text(encoding="utf-8"), Loader=config.yaml_loader)
    check_setting_types(config, {**config.internal_config_dict, **transfer})
    _check_paths_and_epochs(config)
    _check_valid_metric(config)
    check_model_settings(config)


def _downloadable(dataset: str) -> bool:
    urls = yaml.safe_load((_RECBOLE / "properties" / "dataset" / "url.yaml").read_text(encoding="utf-8"))
    return dataset in urls


def _guard_split(config: Config, dataset) -> None:
    """Make RecBole's split (``dataset.build()``, run by ``data_preparation``) refuse an empty part
    that RecBole would train or evaluate on, before it builds samplers and loaders."""
    build, size = dataset.build, f"{dataset.user_num - 1} users, {dataset.inter_num} interactions"
    ((mode, value),) = config["eval_args"]["split"].items()
    if mode == "LS":
        expected = (True, value != "test_only", value != "valid_only")
    elif mode == "RS":
        expected = tuple(ratio > 0 for ratio in value)
    else:
        expected = (True,)

    def checked_build():
        parts = build()
        for name, part, needed in zip(("training", "validation", "test"), parts, expected, strict=False):
            if needed and len(part) == 0:
                raise DatasetError(
                    f"dataset {config['dataset']}: RecBole's split {config['eval_args']['split']} leaves the "
                    f"{name} set empty ({size}): too few interactions per user; add data or keep longer "
                    "histories (user_inter_num_interval)"
                )
        return parts

    dataset.build = checked_build


def load_dataset(config: Config):
    """RecBole's ``create_dataset(config)`` with the checks of the module docstring."""
    folder, name = config["data_path"], config["dataset"]
    if not os.path.isdir(folder) and not _downloadable(name):
        raise DatasetError(
            f"no dataset folder {folder}: {name!r} is neither a folder under data_path "
            f"({os.path.dirname(folder)}) nor a dataset RecBole can download; srt-prep writes one"
        )
    inter = Path(folder, f"{name}.inter")
    if inter.is_file() and inter.stat().st_size == 0:
        raise DatasetError(f"{inter}: empty file (an atomic file starts with its header line)")
    try:
        dataset = create_dataset(config)
    except urllib.error.URLError as error:
        raise DatasetError(
            f"could not download RecBole's dataset {name!r} to {folder} ({error.reason})"
        ) from None
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"dataset {name}: its .inter or .item file in {folder} is not {error.encoding} text "
            f"({error.reason})"
        ) from None
    time_field = config["TIME_FIELD"]
    if config["eval_args"]["order"] == "TO" and time_field not in dataset.inter_feat.columns:
        raise DatasetError(
            f"dataset {name}: its {time_field!r} column is not loaded, and the time-ordered split sorts by "
            f"it; give the dataset's YAML (srt-prep writes {name}.yaml with its load_col) in config_files, "
            "or add the column to load_col"
        )
    n_items, k = dataset.item_num - 1, max(config["topk"])  # RecBole's Config makes topk a list
    if config["eval_type"] == EvaluatorType.RANKING and k > n_items:
        raise DatasetError(
            f"dataset {name}: {n_items} items, fewer than topk {k}; set topk to at most {n_items}"
        )
    _guard_split(config, dataset)
    return dataset
