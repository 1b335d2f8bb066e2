"""``srt-prep merge``: several RecBole atomic datasets -> one multi-domain pre-training corpus.

Each source ``NAME=FOLDER`` is a RecBole atomic dataset: ``FOLDER/NAME.inter`` (``user_id``, ``item_id``,
``timestamp``), ``FOLDER/NAME.item`` and, optionally, ``FOLDER/NAME.yaml``. The corpus keeps every source
apart:

* ids are namespaced, ``NAME/user`` and ``NAME/item``: user ``u1`` of one dataset is not user ``u1`` of
  another, and item ``1`` of MovieLens is not item ``1`` of Yelp;
* an item's text is what SRT reads for it in its own dataset (the YAML's ``text_fields``, else every
  token field but the id, joined by :func:`dataset_prep.text.join_text`), in one ``text`` field, so the
  corpus gives an item the vector its own dataset gives it; a ``domain`` token names the source;
* timestamps are kept: RecBole orders each user's interactions by them, and a user has one source.

Leakage guard: ``--exclude-users-of TARGET.inter`` (repeatable) removes the targets' users from the
sources named by ``--guard`` (the sources whose user ids are the targets', e.g. Amazon reviewer ids); a
source with anonymised ids (``u1``, ``u2``, ...) cannot be matched to a target's users and is left whole.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml

from dataset_prep.atomic import Staging, dataset_config, dataset_folder, write_json, write_yaml
from dataset_prep.errors import PrepError
from dataset_prep.streams import text_lines
from dataset_prep.text import join_text

INTER_HEADER = ["user_id:token", "item_id:token", "timestamp:float"]
ITEM_HEADER = ["item_id:token", "text:token_seq", "domain:token"]


def _header(path: Path, line: str) -> dict[str, str]:
    """Field name -> type of an atomic file's ``name:type`` header."""
    cells = [cell.split(":", 1) for cell in line.split("\t")]
    fields = {cell[0]: cell[1] if len(cell) == 2 else "" for cell in cells}
    if len(fields) != len(cells):
        raise PrepError(f"repeated field in the header {line!r}", path, 1)
    return fields


def _rows(path: Path, needed: list[str]) -> tuple[dict[str, str], list[list[str]]]:
    """The header (name -> type) and the rows (cell lists) of an atomic file, checked for ``needed``."""
    lines = text_lines(path)
    try:
        _, first = next(lines)
    except StopIteration:
        raise PrepError("empty file: expected a name:type header", path) from None
    fields = _header(path, first)
    missing = [name for name in needed if name not in fields]
    if missing:
        raise PrepError(f"no {', '.join(missing)} field in the header (it has {list(fields)})", path, 1)
    rows = []
    for number, line in lines:
        cells = line.split("\t")
        if len(cells) != len(fields):
            raise PrepError(f"{len(cells)} cells, the header has {len(fields)}", path, number)
        rows.append(cells)
    return fields, rows


def text_fields(folder: Path, name: str, item_fields: dict[str, str]) -> list[str]:
    """The fields SRT reads as ``name``'s item text: the dataset YAML's ``text_fields``, else every
    ``token``/``token_seq`` field of the ``.item`` header but the id (SRT's ``text_fields: ~``)."""
    config_path = folder / f"{name}.yaml"
    config = {}
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise PrepError(f"not valid YAML ({getattr(error, 'problem', error)})", config_path) from None
    chosen = config.get("text_fields") if isinstance(config, dict) else None
    if chosen is None:
        return [f for f, kind in item_fields.items() if kind in ("token", "token_seq") and f != "item_id"]
    unknown = [f for f in chosen if f not in item_fields]
    if unknown:
        raise PrepError(f"text_fields names {unknown}, which {name}.item does not have", config_path)
    return list(chosen)


def read_users(path: Path) -> set[str]:
    """The user ids of a RecBole ``.inter`` file."""
    fields, rows = _rows(path, ["user_id"])
    column = list(fields).index("user_id")
    return {row[column] for row in rows}


def merge(
    sources: list[tuple[str, Path]],
    output: Path,
    name: str,
    exclude_users_of: list[Path] | None = None,
    guard: list[str] | None = None,
    max_seq_len: int = 50,
) -> dict:
    """Write the corpus ``output/name`` (atomic files, YAML, ``report.json``); return the report."""
    target = dataset_folder(output, name)
    names = [source for source, _ in sources]
    if len(set(names)) != len(names) or any("/" in n or not n for n in names):
        raise PrepError(f"source names must be distinct and contain no '/': {names}")
    unknown_guard = sorted(set(guard or []) - set(names))
    if unknown_guard or (guard and not exclude_users_of):
        what = (
            f"--guard {unknown_guard} names no source"
            if unknown_guard
            else "--guard needs --exclude-users-of"
        )
        raise PrepError(what)
    excluded = set().union(*(read_users(path) for path in exclude_users_of or []))
    report: dict = {
        "name": name,
        "sources": {},
        "excluded_users_of": [str(p) for p in exclude_users_of or []],
    }
    inter_out, item_out = [], []
    for source, folder in sources:
        inter_fields, inter_rows = _rows(folder / f"{source}.inter", ["user_id", "item_id", "timestamp"])
        user, item, time = (list(inter_fields).index(f) for f in ("user_id", "item_id", "timestamp"))
        guarded = source in (guard or [])
        kept = [row for row in inter_rows if not (guarded and row[user] in excluded)]
        item_fields, item_rows = _rows(folder / f"{source}.item", ["item_id"])
        fields = text_fields(folder, source, item_fields)
        order = list(item_fields)
        columns, id_column = [order.index(f) for f in fields], order.index("item_id")
        texts = {row[id_column]: join_text([row[c] for c in columns]) for row in item_rows}
        used = Counter(row[item] for row in kept)
        report["sources"][source] = {
            "folder": str(folder),
            "text_fields": fields,
            "interactions": {"before": len(inter_rows), "after": len(kept)},
            "users": {"before": len({r[user] for r in inter_rows}), "after": len({r[user] for r in kept})},
            "items": len(used),
            "items_without_text": sum(not texts.get(i) for i in used),
            "guarded": guarded,
        }
        inter_out += [f"{source}/{r[user]}\t{source}/{r[item]}\t{r[time]}\n" for r in kept]
        item_out += [f"{source}/{i}\t{texts.get(i, '')}\t{source}\n" for i in used]
    if not inter_out:
        raise PrepError("no interaction left: every user of the guarded sources is in --exclude-users-of")
    report["interactions"], report["items"] = len(inter_out), len(item_out)
    report["users"] = sum(s["users"]["after"] for s in report["sources"].values())
    with Staging(target) as stage:
        for file, header, lines in (
            (f"{name}.inter", INTER_HEADER, inter_out),
            (f"{name}.item", ITEM_HEADER, item_out),
        ):
            with open(stage.path(file), "w", encoding="utf-8") as out:
                out.write("\t".join(header) + "\n")
                out.writelines(lines)
        config = dataset_config(
            output, ["user_id", "item_id", "timestamp"], ["item_id", "text", "domain"], max_seq_len
        )
        config["text_fields"] = ["text"]  # the domain token is not item text
        write_yaml(stage.path(f"{name}.yaml"), config)
        write_json(stage.path("report.json"), report)
        stage.commit()
    return report
