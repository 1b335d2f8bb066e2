"""Make RecBole find the plugin's classes by name, the way it finds its own.

* Model: ``recbole.utils.get_model(name)`` imports ``recbole.model.sequential_recommender.<name>``;
  the plugin's module is put into ``sys.modules`` under that name (``run_recbole``,
  ``objective_function``, ``load_data_and_model`` and ``Config`` all go through it).
* Trainer: ``recbole.utils.get_trainer(model_type, name)`` takes ``recbole.trainer.<Name>Trainer``
  when it exists; ``SRTTrainer`` is set there.
* Dataset: ``recbole.data.create_dataset`` takes ``recbole.data.dataset.<Name>Dataset`` when it
  exists; ``SRTDataset`` is set there.
* YAML defaults: ``properties/model/<Name>.yaml`` (installed as ``recbole_srt.properties``) and the
  named recipes of ``properties/recipes/``, loaded in RecBole's order by
  :func:`recbole_srt.compat.plugin_model_yamls`.

It must happen in every process (Ray workers and DDP ranks included): ``import recbole_srt`` does it.
"""

from __future__ import annotations

import importlib
import sys
from importlib.resources import files
from pathlib import Path

from recbole_srt import compat

# model name -> modules that define the model, its trainer and its dataset
PLUGIN_MODELS: dict[str, tuple[str, str, str]] = {
    "SRT": ("recbole_srt.model.srt", "recbole_srt.trainer", "recbole_srt.data")
}
_PROPERTIES = Path(str(files("recbole_srt.properties")))
# Fine-tuning defaults (recbole_srt.transfer), a config file below the user's.
TRANSFER_YAML = _PROPERTIES / "transfer.yaml"


def plugin_yaml(model: str) -> Path:
    """Path of a plugin model's default properties."""
    return _PROPERTIES / "model" / f"{model}.yaml"


def register() -> None:
    """Register every plugin model, its trainer and its YAML with RecBole (idempotent)."""
    recbole_trainers = importlib.import_module("recbole.trainer")
    recbole_datasets = importlib.import_module("recbole.data.dataset")
    for name, modules in PLUGIN_MODELS.items():
        model, trainer, dataset = map(importlib.import_module, modules)
        sys.modules[f"recbole.model.sequential_recommender.{name.lower()}"] = model
        setattr(recbole_trainers, f"{name}Trainer", getattr(trainer, f"{name}Trainer"))
        setattr(recbole_datasets, f"{name}Dataset", getattr(dataset, f"{name}Dataset"))
        compat.PLUGIN_YAMLS[name] = plugin_yaml(name)
        compat.PLUGIN_RECIPES[name] = _PROPERTIES / "recipes"
