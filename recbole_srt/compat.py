"""RecBole 1.2.1 on today's Python stack: the one place that patches RecBole.

RecBole 1.2.1 (2023) predates numpy 2, pandas 3, Ray's Tune API of 2.4x and later, hyperopt 0.3 and
torch 2.6, and has no plugin hook for a model's YAML. Every change this project makes to RecBole's
behaviour is here, each with its reason (in full: ``docs/compat.md``) and a test in
``tests/test_compat.py`` that fails without it. (:mod:`recbole_srt.stack` checks, before RecBole is
imported, that RecBole 1.2.1 is installed.)

* :func:`numpy_aliases` (``Config.compatibility_settings``): RecBole aliases ``np.float`` & co. from
  ``np.float_``, ``np.complex_`` and ``np.unicode_``, which numpy 2 removed; and only ``Config.__init__``
  installs them, so a ``Config`` unpickled by ``load_data_and_model`` crashes ``NDCG``.
* :func:`pandas_copy_on_write` (``Dataset._fill_nan``, ``pd.read_csv`` in ``Dataset._load_feat``): pandas
  3's Copy-on-Write makes RecBole's ``df[field].fillna(..., inplace=True)`` a no-op, so an empty
  sequence cell crashes loading and a missing token or float is corrupted, silently.
* :func:`series_agg_by_cell` (``Series.agg`` called from RecBole): pandas 3 applies ``agg(len)`` to the
  whole column, not to each sequence cell, so every sequence field is split wrongly.
* :func:`tune_report_dict` (``tune.report`` in ``objective_function``) and :func:`hyperopt_generator`
  (``exhaustive_search``): Ray's ``tune.report`` takes a dict since 2.7, and hyperopt 0.3 draws with
  ``Generator.integers``, not a ``RandomState``.
* :func:`safe_recbole_checkpoints`: RecBole pickles its ``Config`` into every checkpoint, so its readers
  (``load_data_and_model``, ``resume_checkpoint``, ``evaluate``) run whatever code the file holds (torch
  >= 2.6 refuses it). Every trainer writes SRT's weights-only format instead and the readers read it,
  its config dict made a ``Config`` again; no file is ever unpickled in full. Its data module unpickles
  any saved dataset or dataloaders it finds in ``checkpoint_dir``: those are refused unread.
* :func:`default_no_negatives_for_ce` (``Config._set_default_parameters``): RecBole ships
  ``train_neg_sample_args: uniform`` and then refuses it for its own CE models (SASRec's and BERT4Rec's
  default).
* :func:`scoped_argv` (``Config._load_cmd_line``): every ``Config()`` reads ``sys.argv``, so a script's
  own flags (pytest's, Ray's) become config keys; not within :func:`ignoring_argv`, the scope
  :mod:`recbole_srt.pipeline` uses.
* :func:`literal_config_values` (``Config._convert_config_dict``): RecBole ``eval()``\\ s every string of
  ``config_dict`` and of the command line; they are parsed as ast literals instead.
* :func:`plugin_model_yamls` (``Config._update_internal_config_dict``): RecBole reads model YAMLs only
  from its own package; a plugin's YAML loads right after ``overall.yaml``.
* :func:`ddp_on_cpu` (``Config._init_device``, ``DistributedDataParallel`` in ``recbole.trainer.trainer``):
  DDP hard-codes NCCL and CUDA devices, so ``run_recbole --nproc=N`` cannot run without a GPU; gloo and
  CPU when no GPU is used.
* :func:`exact_duplicates_dropped` (``Dataset._remove_duplication``): RecBole trains and evaluates on exact
  duplicate interactions (the same user, item and time twice), which put a test target into its own
  history; they are dropped with one warning, for every model, before RecBole's filters
  (:func:`dataset_prep.filters.exact_duplicate_rows`, the definition srt-prep uses too).

:func:`apply` runs them all; ``import recbole_srt`` calls it.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import copy
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pandas as pd
import recbole
import recbole.data.dataset.dataset as recbole_dataset
import recbole.data.utils as recbole_data_utils
import recbole.quick_start.quick_start as recbole_quick_start
import recbole.trainer.hyper_tuning as recbole_hyper_tuning
import recbole.trainer.trainer as recbole_trainer
import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from recbole.utils import FeatureType, ModelType, set_color
from torch.nn.parallel import DistributedDataParallel

from dataset_prep.filters import exact_duplicate_rows
from recbole_srt.checkpoint import (
    CheckpointError,
    checkpoint_state,
    read_checkpoint,
    recbole_state,
    write_checkpoint,
)

# RecBole modules that torch.load checkpoints (Trainer.resume_checkpoint,
# Trainer.evaluate(load_best_model=True), quick_start.load_data_and_model).
_RECBOLE_CHECKPOINT_READERS = ("recbole.trainer.trainer", "recbole.quick_start.quick_start")
_OVERALL_YAML = (Path(recbole.__file__).parent / "properties" / "overall.yaml").resolve()


class ModuleView:
    """What one RecBole module sees as a library: the library itself, with a few names replaced.

    Setting ``recbole_module.pd = ModuleView(pd, read_csv=...)`` changes ``pd.read_csv`` for that module's
    code alone; every other name, and every other module, gets the library unchanged.
    """

    def __init__(self, library: ModuleType | ModuleView, **replaced):
        self._library, self._replaced = library, replaced

    def __getattr__(self, name: str):
        return self._replaced[name] if name in self._replaced else getattr(self._library, name)


def _library(view: ModuleType | ModuleView) -> ModuleType | ModuleView:
    """The library behind ``view`` (idempotent patches wrap the original, never a view)."""
    return view._library if isinstance(view, ModuleView) else view


# The numpy names RecBole 1.2.1 uses that numpy 2 (or 1.24) removed, as Config.compatibility_settings
# defines them, but from names numpy 2 still has.
_NUMPY_ALIASES = {
    "bool": np.bool_,
    "int": np.int_,
    "float": np.float64,
    "complex": np.complex128,
    "object": np.object_,
    "str": np.str_,
    "long": np.int_,
    "unicode": np.str_,
}


_recbole_compatibility_settings = Config.compatibility_settings


def _compatibility_settings(self: Config | None = None) -> None:
    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:  # np.bool and np.long are numpy 2 names again: left alone
            setattr(np, name, value)


def numpy_aliases() -> None:
    """Install the aliases RecBole 1.2.1 relies on now (and whenever RecBole builds a ``Config``)."""
    Config.compatibility_settings = _compatibility_settings
    _compatibility_settings()


def _read_csv_filling_sequences(*args, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` for ``Dataset._load_feat``: empty ``token_seq``/``float_seq`` cells read as ``""``.

    ``_load_feat`` reads with the atomic file's header names (``field:type``) and then calls
    ``df[field].fillna(value="", inplace=True)`` on each sequence column, a no-op under Copy-on-Write,
    before splitting every cell; this does that fill, on the frame itself.
    """
    df = pd.read_csv(*args, **kwargs)
    sequences = [column for column in df.columns if str(column).rsplit(":", 1)[-1].endswith("seq")]
    if sequences:
        df[sequences] = df[sequences].fillna("")
    return df


_recbole_load_feat = Dataset._load_feat


def _load_feat(self: Dataset, filepath: str, source):
    """``Dataset._load_feat`` without pandas 3's warning about its own no-op fill of each sequence column
    (the fill is done by :func:`_read_csv_filling_sequences`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=pd.errors.ChainedAssignmentError)
        return _recbole_load_feat(self, filepath, source)


_recbole_fill_nan = Dataset._fill_nan


def _fill_nan(self: Dataset) -> None:
    """``Dataset._fill_nan`` (missing token -> 0, the padding id; missing float -> the field's mean; missing
    sequence -> an empty array), written as column assignments, which Copy-on-Write keeps."""
    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                empty = np.array([], dtype=np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64)
                feat[field] = [empty.copy() if isinstance(x, float) else x for x in feat[field]]


class _OwnedColumns:
    """A DataFrame as ``Dataset._dataframe_to_interaction`` reads it (``for k in data``, ``data[k].values``),
    each column a writable array of its own: under Copy-on-Write ``.values`` is a read-only view of memory
    other frames may share, which torch would wrap (warning that it is not writable) instead of owning."""

    def __init__(self, frame: pd.DataFrame):
        self._frame = frame

    def __iter__(self) -> Iterator[str]:
        return iter(self._frame.columns)

    def __getitem__(self, column: str) -> SimpleNamespace:
        return SimpleNamespace(values=self._frame[column].to_numpy(copy=True))


_recbole_dataframe_to_interaction = Dataset._dataframe_to_interaction


def _dataframe_to_interaction(self: Dataset, data):
    columns = _OwnedColumns(data) if isinstance(data, pd.DataFrame) else data
    return _recbole_dataframe_to_interaction(self, columns)


def pandas_copy_on_write() -> None:
    """RecBole's two chained in-place fills, made effective under pandas 3 (and unchanged under pandas 2),
    and its tensors made from columns given memory of their own.

    The fills are RecBole 1.2.1's only chained in-place writes to a DataFrame column in its data path (its
    other ``inplace=True`` calls are on whole frames, which Copy-on-Write keeps).
    """
    recbole_dataset.pd = ModuleView(_library(recbole_dataset.pd), read_csv=_read_csv_filling_sequences)
    Dataset._fill_nan = _fill_nan
    Dataset._dataframe_to_interaction = _dataframe_to_interaction
    Dataset._load_feat = _load_feat


_series_agg = pd.Series.agg


def _agg_for_recbole(self: pd.Series, func=None, *args, **kwargs):
    """``Series.agg`` as pandas 2 ran a function for RecBole: cell by cell if it can, else on the whole.

    RecBole writes ``feat[field].agg(len)`` for the length of every sequence cell; pandas 3 returns the
    length of the column instead. Calls from other modules get pandas' own ``agg``.
    """
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if not (caller.startswith("recbole.") and callable(func) and not args and not kwargs):
        return _series_agg(self, func, *args, **kwargs)
    try:
        return self.apply(func)
    except (ValueError, AttributeError, TypeError):  # pandas 2's fallback, e.g. np.concatenate of a cell
        return func(self)


def series_agg_by_cell() -> None:
    """RecBole's ``Series.agg(len)`` and ``Series.agg(np.concatenate)`` keep their pandas 2 meaning."""
    pd.Series.agg = _agg_for_recbole


def _report_keywords(**metrics) -> None:
    """Ray < 2.7's ``tune.report(**metrics)`` on today's ``tune.report(metrics)``; outside a Tune trial
    (RecBole's hyperopt search calls it in-process) a no-op, as it was, without Ray's misuse warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`report` is meant to only be called", UserWarning)
        _library(recbole_quick_start.tune).report(metrics)


def tune_report_dict() -> None:
    """RecBole's ``objective_function`` reports its test result with Ray's pre-2.7 keyword call."""
    recbole_quick_start.tune = ModuleView(_library(recbole_quick_start.tune), report=_report_keywords)


def hyperopt_generator() -> None:
    """RecBole's exhaustive search draws with a ``RandomState``; hyperopt 0.3 calls ``rng.integers``."""
    numpy = _library(recbole_hyper_tuning.np)
    random = ModuleView(numpy.random, RandomState=numpy.random.default_rng)
    recbole_hyper_tuning.np = ModuleView(numpy, random=random)


_torch_load = torch.load
# Checkpoints this process wrote in RecBole's full-pickle format (a config or model value SRT's format
# cannot hold): real path -> (the file's inode, size and mtime at writing, a copy of what was saved).
# RecBole's readers get that copy back; the file itself is never unpickled.
_own_full_pickles: dict[str, tuple[tuple[int, int, int] | None, dict]] = {}


def _identity(path: str | os.PathLike) -> tuple[str, tuple[int, int, int] | None]:
    real = os.path.realpath(path)
    try:
        stat = os.stat(real)
    except OSError:
        return real, None
    return real, (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _save_checkpoint(self, epoch, verbose=True, **kwargs):
    """``Trainer._save_checkpoint`` of every RecBole trainer: SRT's weights-only format, written atomically
    (:mod:`recbole_srt.checkpoint`); RecBole's own format only when the config or model holds what that
    format cannot, with an in-memory copy for this process to read back."""
    if not self.config["single_spec"] and self.config["local_rank"] != 0:
        return
    path = kwargs.pop("saved_model_file", self.saved_model_file)
    state = checkpoint_state(self, epoch)
    if state is not None:
        write_checkpoint(state, path)
    else:
        state = {"config": self.config, **recbole_state(self, epoch)}
        torch.save(state, path, pickle_protocol=4)  # RecBole's own layout and protocol
        real, identity = _identity(path)
        saved = copy.deepcopy({key: value for key, value in state.items() if key != "config"})  # not live
        _own_full_pickles[real] = (identity, {"config": self.config, **saved})
    if verbose:
        self.logger.info(set_color("Saving current", "blue") + f": {path}")


def _load_for_recbole(f, *args, **kwargs):
    """``torch.load``; for RecBole's checkpoint readers, :func:`recbole_srt.checkpoint.read_checkpoint`.

    A call made directly by a module of ``_RECBOLE_CHECKPOINT_READERS`` (as RecBole makes it: a path
    and ``map_location``) reads SRT's weights-only format, or gets the copy of a full pickle this process
    wrote, unchanged since; anything else is a :class:`CheckpointError`. Every other caller gets torch's
    own ``torch.load``.
    """
    caller = sys._getframe(1).f_globals.get("__name__")
    recbole_call = isinstance(f, str | os.PathLike) and not args and set(kwargs) <= {"map_location"}
    if caller not in _RECBOLE_CHECKPOINT_READERS or not recbole_call:
        return _torch_load(f, *args, **kwargs)
    real, identity = _identity(f)
    own = _own_full_pickles.get(real)
    if own is not None and identity is not None and own[0] == identity:  # our own file, not a user's
        return own[1]
    return read_checkpoint(f, kwargs.get("map_location"))


def _refuse_unpickling(file) -> None:
    """``pickle.load`` for RecBole's data module, which unpickles any saved dataset or split dataloaders it
    finds (``save_dataset``, ``save_dataloaders``; in ``checkpoint_dir``, ``dataset_save_path`` or
    ``dataloaders_save_path``): never."""
    raise CheckpointError(
        f"{getattr(file, 'name', file)}: a pickled RecBole dataset or dataloaders (save_dataset, "
        "save_dataloaders); not read, since unpickling it can run arbitrary code. Move it away: the dataset "
        "is built from its atomic files"
    )


def safe_recbole_checkpoints() -> None:
    """No RecBole trainer writes, and no RecBole reader unpickles, a full pickle (idempotent): neither a
    checkpoint nor a saved dataset or dataloaders."""
    recbole_trainer.Trainer._save_checkpoint = _save_checkpoint
    torch.load = _load_for_recbole
    recbole_data_utils.pickle = ModuleView(_library(recbole_data_utils.pickle), load=_refuse_unpickling)


_recbole_set_default_parameters = Config._set_default_parameters


def _set_default_parameters(self: Config) -> None:
    final = self.final_config_dict
    if (
        final["MODEL_TYPE"] == ModelType.SEQUENTIAL
        and final.get("loss_type") == "CE"
        and "train_neg_sample_args" not in self.external_config_dict
    ):
        final["train_neg_sample_args"] = None
    _recbole_set_default_parameters(self)


def default_no_negatives_for_ce() -> None:
    """Sequential models trained with full cross-entropy default to no sampled negatives.

    An explicit user setting still reaches RecBole's check unchanged.
    """
    Config._set_default_parameters = _set_default_parameters


_reads_argv = contextvars.ContextVar("recbole_config_reads_argv", default=True)
_recbole_load_cmd_line = Config._load_cmd_line


def _load_cmd_line(self: Config) -> dict:
    return _recbole_load_cmd_line(self) if _reads_argv.get() else {}


@contextlib.contextmanager
def ignoring_argv() -> Iterator[None]:
    """Within this scope, ``Config()`` does not read ``--key=value`` from ``sys.argv``."""
    token = _reads_argv.set(False)
    try:
        yield
    finally:
        _reads_argv.reset(token)


def scoped_argv() -> None:
    """Make :func:`ignoring_argv` work; outside it, RecBole reads ``sys.argv`` as it always did."""
    Config._load_cmd_line = _load_cmd_line


def _literal(value: str):
    """A config string as RecBole means it (numbers, lists, dicts, booleans), without ``eval``."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return {"true": True, "false": False}.get(value.lower(), value)


def _convert_config_dict(self: Config, config_dict: dict) -> dict:
    config_dict.update({key: _literal(value) for key, value in config_dict.items() if isinstance(value, str)})
    return config_dict


def literal_config_values() -> None:
    """RecBole ``eval()``\\ s config strings; parse them as Python literals instead (no code runs)."""
    Config._convert_config_dict = _convert_config_dict


# model name -> its YAML defaults, and the folder of its named recipes; filled by registration
PLUGIN_YAMLS: dict[str, Path] = {}
PLUGIN_RECIPES: dict[str, Path] = {}
_recbole_update_internal_config_dict = Config._update_internal_config_dict


class UnknownRecipeError(ValueError):
    """A ``recipe`` that the model does not ship."""


def recipe_yaml(model: str, recipe: str) -> Path:
    """The YAML of ``model``'s named ``recipe``; :class:`UnknownRecipeError` naming the shipped ones."""
    folder = PLUGIN_RECIPES.get(model)
    shipped = sorted(p.stem for p in folder.glob("*.yaml")) if folder else []
    if recipe not in shipped:
        raise UnknownRecipeError(f"{model} has no recipe {recipe!r}; shipped recipes: {shipped}")
    return folder / f"{recipe}.yaml"


def _update_internal_config_dict(self: Config, file: str):
    loaded = _recbole_update_internal_config_dict(self, file)
    if self.model in PLUGIN_YAMLS and Path(file).resolve() == _OVERALL_YAML:
        defaults = _recbole_update_internal_config_dict(self, str(PLUGIN_YAMLS[self.model])) or {}
        recipe = self.external_config_dict.get("recipe", defaults.get("recipe"))
        if recipe:
            _recbole_update_internal_config_dict(self, str(recipe_yaml(self.model, recipe)))
    return loaded


def plugin_model_yamls() -> None:
    """A plugin model's YAML loads right after ``overall.yaml``, where RecBole loads its own models',
    and its ``recipe`` (if one is named) right after that.

    So they outrank ``overall.yaml`` and are outranked by the dataset's YAML, RecBole's quick-start
    presets and everything the user passes, exactly as for RecBole's built-in models.
    """
    Config._update_internal_config_dict = _update_internal_config_dict


_recbole_init_device = Config._init_device


def _init_device(self: Config) -> None:
    final = self.final_config_dict
    if "local_rank" not in final or (str(final["gpu_id"]) != "" and torch.cuda.is_available()):
        _recbole_init_device(self)
        return
    # RecBole's DDP branch, with gloo on CPU instead of NCCL on a CUDA device.
    final["gpu_id"] = os.environ["CUDA_VISIBLE_DEVICES"] = ""
    torch.distributed.init_process_group(
        backend="gloo",
        rank=final["local_rank"] + final["offset"],
        world_size=final["world_size"],
        init_method=f"tcp://{final['ip']}:{final['port']}",
    )
    final["device"], final["single_spec"] = torch.device("cpu"), False
    if final["local_rank"] != 0:
        final["state"], final["show_progress"], final["verbose"] = "error", False, False


def _distributed_model(module: torch.nn.Module, device_ids=None, **kwargs):
    """RecBole passes ``device_ids=[local_rank]``, which DDP refuses for a module on the CPU."""
    on_cpu = next(module.parameters()).device.type == "cpu"
    return DistributedDataParallel(module, device_ids=None if on_cpu else device_ids, **kwargs)


def ddp_on_cpu() -> None:
    """``run_recbole --nproc=N`` without a GPU: gloo process group, CPU device, CPU DDP wrapper."""
    Config._init_device = _init_device
    recbole_trainer.DistributedDataParallel = _distributed_model


_recbole_remove_duplication = Dataset._remove_duplication


def _remove_duplication(self: Dataset) -> None:
    """``Dataset._remove_duplication`` (``rm_dup_inter``), after the exact duplicate interactions are dropped
    with one warning that counts them (the first of each is kept). Needs the time field loaded: without
    it, a repeat cannot be told from a duplicate."""
    frame, fields = self.inter_feat, (self.uid_field, self.iid_field, self.time_field)
    if all(field is not None and field in frame for field in fields):
        rows = exact_duplicate_rows(*(frame[field].to_numpy() for field in fields))
        if len(rows):
            self.logger.warning(
                f"dataset {self.dataset_name}: {len(rows)} exact duplicate interactions (the same user, item "
                "and time as an earlier row) dropped, the first of each kept"
            )
            self.inter_feat = frame.drop(index=frame.index[rows])
    _recbole_remove_duplication(self)


def exact_duplicates_dropped() -> None:
    """Every RecBole dataset loses its exact duplicate interactions before RecBole's filters."""
    Dataset._remove_duplication = _remove_duplication


def apply() -> None:
    """Patch RecBole 1.2.1 (:func:`recbole_srt.stack.check_stack` has checked that it is that version)."""
    numpy_aliases()
    pandas_copy_on_write()
    series_agg_by_cell()
    tune_report_dict()
    hyperopt_generator()
    safe_recbole_checkpoints()
    default_no_negatives_for_ce()
    scoped_argv()
    literal_config_values()
    plugin_model_yamls()
    ddp_on_cpu()
    exact_duplicates_dropped()
