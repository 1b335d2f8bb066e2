"""RecBole 1.2.1 on today's Python stack: the one place that patches RecBole.

RecBole 1.2.1 (2023) predates numpy 2, pandas 3, setuptools 82, pyarrow 26 and torch 2.6, and has
no plugin hook for a model's YAML. Every change this project makes to RecBole's behaviour is here,
each with its reason (in full: ``docs/compat.md``) and a test in ``tests/test_compat.py``:

* :func:`check_stack` refuses numpy>=2, pandas>=3, setuptools>=82, pyarrow>=26 and RecBole != 1.2.1
  (pinned in setup.py): RecBole's ``np.float_`` and ray's ``np.bool8``; Copy-on-Write makes RecBole's
  ``fillna(inplace=True)`` a no-op (ids become -2**63, silently); ray needs ``pkg_resources``; pyarrow 26
  needs numpy 2; the patches below are written against RecBole 1.2.1's source.
* :func:`numpy_aliases`: RecBole's metrics use ``np.float`` & co., which only ``Config.__init__``
  aliases, so a ``Config`` unpickled by ``load_data_and_model`` crashes ``NDCG``.
* :func:`safe_recbole_checkpoints`: RecBole pickles its ``Config`` into every checkpoint, so its readers
  (``load_data_and_model``, ``resume_checkpoint``, ``evaluate``) run whatever code the file holds (torch
  >= 2.6 refuses it). Every trainer writes SRT's weights-only format instead and the readers read it,
  its config dict made a ``Config`` again; no file is ever unpickled in full.
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

:func:`apply` runs them all; ``import recbole_srt`` calls it.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import copy
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import recbole
import recbole.trainer.trainer as recbole_trainer
import torch
from recbole.config import Config
from recbole.utils import ModelType, set_color
from torch.nn.parallel import DistributedDataParallel

from recbole_srt.checkpoint import checkpoint_state, read_checkpoint, recbole_state, write_checkpoint

RECBOLE_VERSION = "1.2.1"
# (distribution, first incompatible major version, why)
_UPPER_BOUNDS: tuple[tuple[str, int, str], ...] = (
    ("numpy", 2, "RecBole 1.2.1 uses np.float_ and ray 2.6.3 uses np.bool8, both removed in numpy 2"),
    ("pandas", 3, "pandas 3 Copy-on-Write makes RecBole's fillna(inplace=True) a no-op: data is corrupted"),
    ("setuptools", 82, "setuptools 82 removed pkg_resources, which ray 2.6.3 imports"),
    ("pyarrow", 26, "pyarrow 26 requires numpy 2, which RecBole 1.2.1 cannot use"),
)

# RecBole modules that torch.load checkpoints (Trainer.resume_checkpoint,
# Trainer.evaluate(load_best_model=True), quick_start.load_data_and_model).
_RECBOLE_CHECKPOINT_READERS = ("recbole.trainer.trainer", "recbole.quick_start.quick_start")
_OVERALL_YAML = (Path(recbole.__file__).parent / "properties" / "overall.yaml").resolve()


class IncompatibleStackError(RuntimeError):
    """An installed package version that RecBole 1.2.1 cannot run correctly with."""


def check_stack(versions: Callable[[str], str] = importlib.metadata.version) -> None:
    """Refuse to run on a dependency version known to break or silently corrupt RecBole 1.2.1.

    Raises:
        IncompatibleStackError: naming every offending package, why, and the pip command that fixes it.
    """
    problems = []
    for dist, bad_major, why in _UPPER_BOUNDS:
        try:
            installed = versions(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        if int(installed.split(".")[0]) >= bad_major:
            problems.append((f"{dist}=={installed}: {why}", f"'{dist}<{bad_major}'"))
    installed = versions("recbole")
    if installed != RECBOLE_VERSION:
        why = f"recbole-srt patches RecBole {RECBOLE_VERSION}'s internals (recbole_srt/compat.py)"
        problems.append((f"recbole=={installed}: {why}", f"recbole=={RECBOLE_VERSION}"))
    if problems:
        raise IncompatibleStackError(
            "recbole-srt cannot run RecBole correctly with:\n"
            + "\n".join(f"  {line}" for line, _ in problems)
            + f"\nFix: pip install {' '.join(fix for _, fix in problems)}"
        )


def numpy_aliases() -> None:
    """Install the numpy aliases RecBole 1.2.1 relies on, as ``Config.compatibility_settings`` does."""
    Config.compatibility_settings(None)


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


def safe_recbole_checkpoints() -> None:
    """No RecBole trainer writes, and no RecBole reader unpickles, a full pickle (idempotent)."""
    recbole_trainer.Trainer._save_checkpoint = _save_checkpoint
    torch.load = _load_for_recbole


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


def apply() -> None:
    """Check the stack, then patch what a pin cannot fix."""
    check_stack()
    numpy_aliases()
    safe_recbole_checkpoints()
    default_no_negatives_for_ce()
    scoped_argv()
    literal_config_values()
    plugin_model_yamls()
    ddp_on_cpu()
