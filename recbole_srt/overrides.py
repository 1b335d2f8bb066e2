"""The one way to override settings from a command line: RecBole's ``--key=value``.

Values are parsed as YAML (``--topk=[10,20]``, ``--train_neg_sample_args=~``); a key that is not a
known setting is an error naming the closest known keys (RecBole silently ignores typos). Every CLI
of the project (``run_recbole``, ``srt-finetune``, ``benchmarks/compare.py``, ``benchmarks/sweep.py``)
parses its overrides here. Dotted keys (``recbole.epochs``) reach nested mappings.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import recbole
import yaml

# Keys RecBole reads although no YAML of it defines them (set by its quick start and DDP launcher).
_RUNTIME_KEYS = {"model", "dataset", "local_rank", "world_size", "nproc", "offset", "ip", "port", "encoding"}


class OverrideError(ValueError):
    """A malformed ``--key=value`` or an unknown key."""


def _yaml_keys(paths: Iterable[Path]) -> set[str]:
    keys: set[str] = set()
    for path in paths:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            keys |= set(loaded)
    return keys


def known_config_keys(config_files: Sequence[str | Path] = ()) -> set[str]:
    """Every setting a RecBole run may take: RecBole's property YAMLs, the plugin's, and ``config_files``."""
    recbole_yamls = (Path(recbole.__file__).parent / "properties").rglob("*.yaml")
    plugin_yamls = Path(str(files("recbole_srt.properties"))).rglob("*.yaml")
    sweep = Path(str(files("recbole_srt.properties") / "sweep"))
    ours = [p for p in plugin_yamls if sweep not in p.parents]  # sweep presets are not RecBole settings
    return _yaml_keys([*recbole_yamls, *ours, *config_files]) | _RUNTIME_KEYS


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
