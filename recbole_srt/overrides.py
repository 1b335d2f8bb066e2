"""The one way to override settings from a command line: RecBole's ``--key=value``.

Values are parsed as YAML (``--topk=[10,20]``, ``--train_neg_sample_args=~``); a key that is not a
known setting is an error naming the closest known keys (RecBole silently ignores typos). Every CLI
of the project (``run_recbole``, ``srt-finetune``, ``benchmarks/compare.py``, ``benchmarks/sweep.py``)
parses its overrides here. Dotted keys (``recbole.epochs``) reach nested mappings.

Also the settings' own checks: :func:`read_config_file` (a YAML config file, or one clear error) and
:func:`check_setting_types` (a setting whose default is a number or a boolean holds one, finite).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import recbole
import yaml
from recbole.config import Config

from recbole_srt.model.srt import PER_BLOCK_KEYS

# Keys RecBole reads although no YAML of it defines them (set by its quick start and DDP launcher).
_RUNTIME_KEYS = {"model", "dataset", "local_rank", "world_size", "nproc", "offset", "ip", "port", "encoding"}


class OverrideError(ValueError):
    """A malformed ``--key=value`` or an unknown key."""


class SettingError(ValueError):
    """A setting of the wrong type, or an unknown model."""


# Keys a model checks itself: SRT's per-block dropouts (a number, a list or a rule) and the token cap
# (an integer or ~ for the encoder's own limit; ItemEncoder checks it).
_MODEL_VALIDATED = {"SRT": (*PER_BLOCK_KEYS, "text_max_tokens")}
_KIND_NAMES = {bool: "a boolean (True or False)", int: "an integer", float: "a number"}


def read_config_file(path: str | Path) -> dict:
    """The settings of a YAML config file (``{}`` if empty); :class:`OverrideError` if it cannot be read."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise OverrideError(
            f"config file {path}: {error.strerror if isinstance(error, OSError) else error}"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise OverrideError(
            f"config file {path}{where}: not valid YAML ({getattr(error, 'problem', error)})"
        ) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise OverrideError(f"config file {path}: a YAML {type(loaded).__name__}, not a mapping of settings")
    return loaded or {}


def known_config_keys(config_files: Sequence[str | Path] = ()) -> set[str]:
    """Every setting a RecBole run may take: RecBole's property YAMLs, the plugin's, and ``config_files``."""
    recbole_yamls = (Path(recbole.__file__).parent / "properties").rglob("*.yaml")
    plugin = Path(str(files("recbole_srt.properties")))
    # sweep presets are not RecBole settings
    ours = [p for p in plugin.rglob("*.yaml") if plugin / "sweep" not in p.parents]
    return set().union(*map(read_config_file, [*recbole_yamls, *ours, *config_files])) | _RUNTIME_KEYS


def parse_overrides(args: Sequence[str], known: Collection[str]) -> dict[str, Any]:
    """``["--key=value", ...]`` -> ``{key: YAML value}``; raises :class:`OverrideError`.

    A dotted key is checked by its first part (``recbole.epochs`` needs ``recbole`` to be known).
    """
    overrides: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not sep or not key:
            raise OverrideError(f"unrecognised argument {arg!r}; settings are given as --key=value")
        root = key.split(".")[0]
        if root not in known:
            close = difflib.get_close_matches(root, known, n=3, cutoff=0.75)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise OverrideError(f"unknown setting {key!r}{hint}")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise OverrideError(f"--{key}: value {value!r} is not valid YAML ({error.problem})") from None
    return overrides


def _kind(value) -> type | None:
    return type(value) if type(value) in _KIND_NAMES else None


def check_setting_types(config: Config, defaults: Mapping) -> None:
    """Every setting of ``config`` whose default in ``defaults`` is a bool, an int or a float holds one;
    a number is finite (a NaN rate or temperature would turn every score NaN)."""
    exempt = _MODEL_VALIDATED.get(config["model"], ())
    for key, default in defaults.items():
        kind = _kind(default)
        if kind is None or key in exempt or key not in config:
            continue
        value = config[key]
        if _kind(value) is not kind and not (kind is float and _kind(value) is int):
            raise SettingError(f"setting {key} must be {_KIND_NAMES[kind]}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise SettingError(f"setting {key} must be a finite number, got {value!r}")


def apply_overrides(target: dict, overrides: dict[str, Any]) -> dict:
    """Set each (possibly dotted) key of ``overrides`` in ``target``, creating nested mappings; returns it."""
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = target
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise OverrideError(f"--{key}: {part} is not a mapping")
        node[leaf] = value
    return target
