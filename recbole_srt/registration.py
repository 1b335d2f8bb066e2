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
_RECBOLE_SEQUENTIAL = "recbole.model.sequential_recommender"
# Fine-tuning defaults (recbole_srt.transfer), a config file below the user's.
TRANSFER_YAML = Path(str(files("recbole_srt.properties") / "transfer.yaml"))


def plugin_yaml(model: str) -> Path:
    """Path of a plugin model's default properties."""
    return Path(str(files("recbole_srt.properties") / "model" / f"{model}.yaml"))


def register() -> None:
    """Register every plugin model, its trainer and its YAML with RecBole (idempotent)."""
    recbole_trainers = importlib.import_module("recbole.trainer")
    recbole_datasets = importlib.import_module("recbole.data.dataset")
    for name, (model_module, trainer_module, dataset_module) in PLUGIN_MODELS.items():
        sys.modules[f"{_RECBOLE_SEQUENTIAL}.{name.lower()}"] = importlib.import_module(model_module)
        trainer, dataset = f"{name}Trainer", f"{name}Dataset"
        setattr(recbole_trainers, trainer, getattr(importlib.import_module(trainer_module), trainer))
        setattr(recbole_datasets, dataset, getattr(importlib.import_module(dataset_module), dataset))
        compat.PLUGIN_YAMLS[name] = plugin_yaml(name)
        compat.PLUGIN_RECIPES[name] = Path(str(files("recbole_srt.properties") / "recipes"))
