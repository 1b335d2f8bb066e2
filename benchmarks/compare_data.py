"""Datasets for ``benchmarks/compare.py``: resolve a name to RecBole inputs, derive cold-start sets.

A dataset is resolved to ``(name, data_path, config_files)``:

- ``ml-100k``: RecBole's bundled copy (offline);
- ``<data_dir>/<name>/<name>.yaml`` exists (written by ``srt-prep``): use it;
- ``scientific`` not converted yet: imported with ``srt-prep import-unisrec`` from ``unisrec_dir``.

:func:`hold_out_items` derives a cold-start dataset: a random fraction of items loses every
interaction except the users' last one, so under leave-one-out those items are test targets
that never occur in training or validation sequences.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from dataset_prep.atomic import Staging, write_yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_UNISREC_DIR = REPO.parent / "shared" / "data" / "scientific-unisrec"
ML_100K_LOAD_COL = {"inter": ["user_id", "item_id", "rating", "timestamp"]}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    data_path: Path
    config_files: list[str]

    @property
    def folder(self) -> Path:
        return self.data_path / self.name


def _recbole_ml_100k() -> Path:
    import recbole

    return Path(recbole.__file__).parent / "dataset_example"


def resolve_dataset(name: str, data_dir: Path, unisrec_dir: Path = DEFAULT_UNISREC_DIR) -> DatasetSpec:
    """Find (or import) ``name``; raise ``FileNotFoundError`` saying how to make it."""
    if name == "ml-100k":
        return DatasetSpec(name, _recbole_ml_100k(), [])
    yaml_file = data_dir / name / f"{name}.yaml"
    if not yaml_file.is_file() and name == "scientific" and unisrec_dir.is_dir():
        from dataset_prep.unisrec import import_unisrec

        import_unisrec(unisrec_dir, name, data_dir, prefix=None, max_seq_len=50)
    if not yaml_file.is_file():
        raise FileNotFoundError(
            f"no dataset {name!r}: expected {yaml_file}. Convert it first, e.g. "
            f"'srt-prep convert ... --output {data_dir} --name {name}' or "
            f"'srt-prep import-unisrec --input DIR --name {name} --output {data_dir}'"
        )
    return DatasetSpec(name, data_dir, [str(yaml_file)])


def _read_atomic(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def hold_out_items(
    spec: DatasetSpec, fraction: float, seed: int, out_dir: Path
) -> tuple[DatasetSpec, set[str]]:
    """Write ``<name>-cold<pct>``: ``fraction`` of items kept only as users' last interaction.

    Returns the derived dataset and the held-out item tokens. Users left with fewer than three
    interactions (too few for a train/valid/test split) are dropped.
    """
    name = f"{spec.name}-cold{round(fraction * 100)}"
    folder = out_dir / name
    inter = _read_atomic(spec.folder / f"{spec.name}.inter")
    user, item, time = (
        next(c for c in inter.columns if c.startswith(f"{f}:")) for f in ("user_id", "item_id", "timestamp")
    )
    inter["_t"] = inter[time].astype(float)
    inter = inter.sort_values([user, "_t"], kind="stable")
    items = sorted(inter[item].unique())
    held_out = set(random.Random(seed).sample(items, max(1, round(fraction * len(items)))))
    is_last = ~inter.duplicated(user, keep="last")
    kept = inter[~inter[item].isin(held_out) | is_last]
    kept = kept[kept.groupby(user)[user].transform("size") >= 3].drop(columns="_t")

    config = yaml.safe_load(Path(spec.config_files[0]).read_text()) if spec.config_files else {}
    config = {**config, "load_col": config.get("load_col", ML_100K_LOAD_COL), "data_path": str(out_dir)}
    with Staging(folder) as staging:
        kept.to_csv(staging.path(f"{name}.inter"), sep="\t", index=False)
        shutil.copyfile(spec.folder / f"{spec.name}.item", staging.path(f"{name}.item"))
        write_yaml(staging.path(f"{name}.yaml"), config)
        staging.commit()
    return DatasetSpec(name, out_dir, [str(folder / f"{name}.yaml")]), held_out
