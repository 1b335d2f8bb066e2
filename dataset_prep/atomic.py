"""Atomic output: a dataset folder is staged complete beside its final place, then swapped in.

``Staging(OUTPUT/NAME)`` writes into ``OUTPUT/.NAME.staging/``. :meth:`Staging.commit` adds
``manifest.json`` (size and sha256 of every output file), links in the files of the previous folder that
are not outputs (e.g. a feature cache), and swaps with two renames: ``NAME`` -> ``.NAME.old``, then
``.NAME.staging`` -> ``NAME``; the old folder is removed last. Readers see the old folder or the new one,
never a mix. A run holds ``OUTPUT/.NAME.lock`` (``flock``) throughout; on entry it cleans what a killed run
left: a staging folder is removed, an old folder is renamed back when ``NAME`` is missing (killed between
the two renames), else removed, and the hidden ``.*.tmp-<pid>`` files of earlier versions are deleted.
:func:`unchanged` compares a folder with its manifest ("up to date" needs every file as written).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.csv as pacsv
import yaml

from dataset_prep.errors import PrepError

REPORT = "report.json"
MANIFEST = "manifest.json"
_OLD_TEMP = re.compile(r"\..+\.tmp-\d+")  # a file staged by an earlier srt-prep that was killed
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def dataset_folder(output: Path, name: str) -> Path:
    """``output/name``, refusing a name that is not one plain folder name (``--name``)."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise PrepError(
            f"--name {name!r} must be one folder name (letters, digits, '.', '_', '+', '-'; starting with "
            "a letter or digit; no '/', no '..'); it is also RecBole's dataset name"
        )
    return Path(output) / name


class Staging:
    """A complete new ``directory`` built in a hidden sibling folder, swapped in by :meth:`commit`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        parent, name = self.directory.parent, self.directory.name
        self.folder = parent / f".{name}.staging"
        self._old = parent / f".{name}.old"
        self._lock_path = parent / f".{name}.lock"
        self._lock: int | None = None
        self._staged: list[str] = []

    def __enter__(self) -> Staging:
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _acquire(self._lock_path, self.directory)
            self._recover()
            if self.directory.exists() and not self.directory.is_dir():
                raise PrepError(
                    "exists and is not a folder; remove it or choose another --name", self.directory
                )
            self.folder.mkdir()
        except (OSError, PrepError) as err:
            self._release()
            if isinstance(err, PrepError):
                raise
            raise PrepError(f"cannot write the output folder ({err.strerror})", err.filename) from None
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._recover()
        finally:
            self._release()

    def path(self, name: str) -> Path:
        """Where to write the output file ``name`` (it appears as ``directory/name`` on commit)."""
        self._staged.append(name)
        return self.folder / name

    def commit(self) -> None:
        """Write the manifest, carry over foreign files, swap the folders."""
        manifest = {}
        for name in self._staged:
            path = self.folder / name
            _fsync(path)
            manifest[name] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
        write_json(self.folder / MANIFEST, {"files": manifest})
        _fsync(self.folder / MANIFEST)
        if self.directory.is_dir():
            self._carry_over()
            os.rename(self.directory, self._old)
        os.rename(self.folder, self.directory)
        _fsync(self.directory.parent)
        shutil.rmtree(self._old, ignore_errors=True)

    def _carry_over(self) -> None:
        """Hard-link (or copy) into the new folder the files of the old one that no run wrote."""
        ours = {*self._staged, MANIFEST, REPORT, *_manifest(self.directory)}
        for entry in self.directory.iterdir():
            if entry.name in ours or _OLD_TEMP.fullmatch(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, self.folder / entry.name, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry, self.folder / entry.name)

    def _recover(self) -> None:
        """Undo what an interrupted run left (the lock is held)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._old.exists():
            if self.directory.exists():
                shutil.rmtree(self._old, ignore_errors=True)
            else:
                os.rename(self._old, self.directory)
        if self.directory.is_dir():
            for entry in self.directory.iterdir():
                if _OLD_TEMP.fullmatch(entry.name) and entry.is_file():
                    entry.unlink()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock_path.unlink(missing_ok=True)  # still held: nobody can lock this inode meanwhile
            os.close(self._lock)
            self._lock = None


def _acquire(path: Path, directory: Path) -> int:
    """An exclusive ``flock`` on ``path``, created if needed; the file is unlinked on release, so a lock
    is only valid if the path still names the locked inode after locking (else retry)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise PrepError(
                    f"another srt-prep run is writing this folder (lock {path.name}); wait for it to finish",
                    directory,
                ) from None
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    """The file's sha256, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _manifest(directory: Path) -> dict[str, dict]:
    """The ``files`` of ``directory/manifest.json`` ({} if absent or unreadable)."""
    try:
        files = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return files if isinstance(files, dict) else {}


def unchanged(directory: Path) -> bool:
    """True when ``directory`` has a manifest and every file it lists has its recorded size and sha256."""
    files = _manifest(directory)
    for name, record in files.items():
        path = directory / name
        try:
            if path.stat().st_size != record["size"] or sha256_of(path) != record["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return bool(files)


def write_tsv(path: Path, header: list[str], batches: Iterable[pa.RecordBatch]) -> None:
    """A RecBole atomic file: ``name:type`` header, then tab-separated rows, no quoting.

    pyarrow refuses to write a cell holding a tab, newline or quote with ``quoting_style="none"``, so
    a row can never be split by RecBole's reader."""
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with open(path, "wb") as out:
        out.write(("\t".join(header) + "\n").encode())
        writer = None
        for batch in batches:
            writer = writer or pacsv.CSVWriter(out, batch.schema, write_options=options)
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
    return {
        "data_path": str(data_path.resolve()),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        **({"RATING_FIELD": "rating"} if "rating" in inter_fields else {}),
        "TIME_FIELD": "timestamp",
        "field_separator": "\t",
        "seq_separator": " ",
        "load_col": {"inter": inter_fields, "item": item_fields},
        "MAX_ITEM_LIST_LENGTH": max_len,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
    }
