"""Make RecBole find the plugin's models by name, with their YAML defaults.

RecBole looks a model up with ``recbole.utils.get_model(name)``, which imports
``recbole.model.<kind>_recommender.<name.lower()>`` (``run_recbole``, ``objective_function``,
``load_data_and_model`` and ``Config`` all go through it). Putting the plugin module into
``sys.modules`` under that name is enough for the lookup; it must happen in every process
(Ray workers and DDP ranks included), which ``import recbole_srt`` does.

RecBole reads a model's defaults from ``recbole/properties/model/<Name>.yaml`` inside its own
package. A plugin's YAML lives in this project's ``properties/model/``; :func:`register` makes
``Config`` read it with the precedence RecBole gives its own model YAMLs: above
``overall.yaml``, below the dataset's YAML and RecBole's quick-start presets, below anything
the user passes (config files, ``config_dict``, ``--key=value``).
"""

from __future__ import annotations

import importlib
import sys
from importlib.resources import files
from pathlib import Path

from recbole.config import Config

# model name -> module that defines it
PLUGIN_MODELS: dict[str, str] = {"SRT": "recbole_srt.model.srt"}

_RECBOLE_SEQUENTIAL = "recbole.model.sequential_recommender"
_OVERALL_YAML = Path(importlib.import_module("recbole.config").__file__).parent / "../properties/overall.yaml"
_recbole_load_internal_config_dict = Config._load_internal_config_dict


def plugin_yaml(model: str) -> Path:
    """Path of a plugin model's default properties."""
    return Path(str(files("recbole_srt.properties") / "model" / f"{model}.yaml"))


def _load_internal_config_dict(self: Config, model: str, model_class, dataset: str) -> None:
    _recbole_load_internal_config_dict(self, model, model_class, dataset)
    if model not in PLUGIN_MODELS:
        return
    recbole_defaults = self.internal_config_dict
    self.internal_config_dict = {}
    self._update_internal_config_dict(_OVERALL_YAML)
    overall = self.internal_config_dict
    # Whatever RecBole set beyond overall.yaml (dataset YAML, quick-start presets) outranks the model YAML.
    beyond_overall = {k: v for k, v in recbole_defaults.items() if k not in overall or v != overall[k]}
    self.internal_config_dict = overall
    self._update_internal_config_dict(plugin_yaml(model))
    self.internal_config_dict.update(beyond_overall)


def register() -> None:
    """Register every plugin model with RecBole (idempotent)."""
    for name, module_name in PLUGIN_MODELS.items():
        sys.modules[f"{_RECBOLE_SEQUENTIAL}.{name.lower()}"] = importlib.import_module(module_name)
    Config._load_internal_config_dict = _load_internal_config_dict
