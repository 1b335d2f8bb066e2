"""What RecBole 1.2.1 loads, as one hash per field: the proof that the compat layer keeps data identical.

``tests/data/compat/reference.json`` holds the digests RecBole itself produced on the stack it was
written for (numpy 1.26.4, pandas 2.3.3, no patch needed there); ``tests/test_compat.py`` loads the same
datasets on today's stack, through :mod:`recbole_srt.compat`, and compares. Regenerate the reference in
a virtualenv with ``numpy<2`` and ``pandas<3`` (``tests/data/README.md``)::

    python tests/dataset_digest.py tests/data/compat/reference.json
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MAGAZINE_SLICE = REPO / "tests" / "data" / "amazon2018-magazine-subscriptions"
MAGAZINE = "amazon2018-magazine_subscriptions"
# RecBole's settings under which each case loads; every column of every atomic file is loaded.
COMMON = {"load_col": None, "train_neg_sample_args": None, "loss_type": "CE", "state": "ERROR"}
CASES = {
    "ml-100k": {},
    "magazine": {},
    # every 7th .item row removed and the interactions of those items kept: their item rows are all
    # missing values (RecBole's _fill_nan), beside the empty text cells every Magazine case has
    "magazine-holes": {"filter_inter_by_user_or_item": False},
}


def convert_magazine(output: Path) -> Path:
    """The Magazine slice converted by ``srt-prep`` with every item kept, text or not, in ``output``, and
    a copy with holes in ``output/holes``; returns the YAML."""
    args = ["--release", "2018", "--category", "Magazine_Subscriptions", "--input", str(MAGAZINE_SLICE)]
    args += ["--output", str(output), "--min-user-inter", "2", "--min-item-inter", "2"]
    args += ["--missing-meta", "keep", "--missing-text", "keep"]
    from dataset_prep.cli import main

    if main(["convert", *args]) != 0:
        raise RuntimeError("srt-prep convert failed on the Magazine slice")
    folder, holes = output / MAGAZINE, output / "holes" / MAGAZINE
    holes.mkdir(parents=True)
    (holes / f"{MAGAZINE}.inter").write_bytes((folder / f"{MAGAZINE}.inter").read_bytes())
    rows = (folder / f"{MAGAZINE}.item").read_text(encoding="utf-8").splitlines(keepends=True)
    (holes / f"{MAGAZINE}.item").write_text(
        rows[0] + "".join(rows[1::][i] for i in range(len(rows) - 1) if i % 7), encoding="utf-8"
    )
    return folder / f"{MAGAZINE}.yaml"


def _cell(value) -> str:
    if isinstance(value, np.ndarray):  # a token_seq or float_seq cell
        return f"{value.dtype}:{' '.join(map(repr, value.tolist()))}"
    return f"{type(value).__name__}:{value!r}"


def _hash(values) -> str:
    """One hash of a column: its dtype and bytes if numeric, else the type and value of every cell."""
    array = np.asarray(values)
    if array.dtype.kind in "biuf":
        return hashlib.sha256(
            f"{array.dtype}{array.shape}".encode() + np.ascontiguousarray(array).tobytes()
        ).hexdigest()
    return hashlib.sha256("\n".join(_cell(v) for v in array.tolist()).encode()).hexdigest()


def digest(dataset) -> dict[str, str | int]:
    """Counts, every field of every feature table, and every field's id -> token map, hashed."""
    out: dict[str, str | int] = {
        "users": dataset.user_num,
        "items": dataset.item_num,
        "inter": dataset.inter_num,
    }
    for table in ("inter_feat", "user_feat", "item_feat"):
        feat = getattr(dataset, table)
        for field in [] if feat is None else sorted(feat.columns):
            out[f"{table}.{field}"] = _hash(feat[field].to_numpy())
    for field, tokens in sorted(dataset.field2id_token.items()):
        out[f"tokens.{field}"] = _hash(np.asarray(tokens, dtype=object))
    return out


def load(case: str, magazine_yaml: Path):
    """RecBole's dataset for ``case`` (:data:`CASES`), exactly as ``create_dataset`` builds it."""
    from recbole.config import Config
    from recbole.data import create_dataset

    settings = {**COMMON, **CASES[case]}
    if case == "magazine-holes":
        settings["data_path"] = str(magazine_yaml.parents[1] / "holes")
    files = [] if case == "ml-100k" else [str(magazine_yaml)]
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # RecBole's Config would read --key=value from it
        config = Config(
            model="SASRec", dataset="ml-100k" if case == "ml-100k" else MAGAZINE, config_file_list=files,
            config_dict=settings,
        )  # fmt: skip
    return create_dataset(config)


def digests(work: Path) -> dict[str, dict]:
    magazine_yaml = convert_magazine(work)
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(magazine_yaml.parent.glob("*.i*"))
    }
    return {"converted-files": files, **{case: digest(load(case, magazine_yaml)) for case in CASES}}


def main(path: str) -> int:
    import pandas as pd

    with tempfile.TemporaryDirectory() as work:
        result = {"stack": {"numpy": np.__version__, "pandas": pd.__version__}, **digests(Path(work))}
    Path(path).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
