"""Atomic output: every file is written under a temporary name and renamed into place at the end.

``report.json`` is renamed last and carries the fingerprint of the inputs, so a crash leaves either the
previous complete output or a report that does not match (and the next run redoes the work).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.csv as pacsv
import yaml

REPORT = "report.json"


class Staging:
    """Temporary files in ``directory``, renamed into place by :meth:`commit` (or removed on error)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._staged: list[tuple[Path, Path]] = []
        self._scratch: list[Path] = []

    def __enter__(self) -> Staging:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for tmp in [t for t, _ in self._staged] + self._scratch:
            tmp.unlink(missing_ok=True)

    def path(self, name: str) -> Path:
        """A temporary path that :meth:`commit` renames to ``directory/name``."""
        tmp = self.scratch(name)
        self._scratch.remove(tmp)
        self._staged.append((tmp, self.directory / name))
        return tmp

    def scratch(self, name: str) -> Path:
        """A temporary working file, removed when the staging ends."""
        tmp = self.directory / f".{name}.tmp-{os.getpid()}"
        self._scratch.append(tmp)
        return tmp

    def commit(self) -> None:
        """Rename every staged file into place, ``report.json`` last."""
        (self.directory / REPORT).unlink(missing_ok=True)
        self._staged.sort(key=lambda pair: pair[1].name == REPORT)
        for tmp, final in self._staged:
            os.replace(tmp, final)
        self._staged.clear()


def write_tsv(path: Path, header: list[str], batches: Iterable[pa.RecordBatch]) -> None:
    """A RecBole atomic file: ``name:type`` header, then tab-separated rows, no quoting.

    pyarrow refuses to write a cell holding a tab, newline or quote with ``quoting_style="none"``, so
    a row can never be split by RecBole's reader."""
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with open(path, "wb") as out:
        out.write(("\t".join(header) + "\n").encode())
        writer = None
        for batch in batches:
            if writer is None:
                writer = pacsv.CSVWriter(out, batch.schema, write_options=options)
            writer.write_batch(batch)
        if writer is not None:
            writer.close()


def write_yaml(path: Path, content: dict) -> None:
    """A YAML file, keys in the given order."""
    path.write_text(yaml.safe_dump(content, sort_keys=False, allow_unicode=True), encoding="utf-8")


def write_json(path: Path, content: dict) -> None:
    """Pretty JSON."""
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_report(directory: Path) -> dict | None:
    """The ``report.json`` of a previous run, or None."""
    try:
        return json.loads((directory / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def dataset_config(data_path: Path, inter_fields: list[str], item_fields: list[str], max_len: int) -> dict:
    """The dataset YAML: fields, columns to load, history length and a leave-one-out split by time.

    No user/item filter is set: the converter already filtered."""
    fields = {"USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id"}
    if "rating" in inter_fields:
        fields["RATING_FIELD"] = "rating"
    return {
        "data_path": str(data_path.resolve()),
        **fields,
        "TIME_FIELD": "timestamp",
        "field_separator": "\t",
        "seq_separator": " ",
        "load_col": {"inter": inter_fields, "item": item_fields},
        "MAX_ITEM_LIST_LENGTH": max_len,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
    }
