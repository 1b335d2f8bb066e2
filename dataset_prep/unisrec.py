"""``srt-prep import-unisrec``: UniSRec/VQ-Rec pre-split files -> standard RecBole atomic files.

Input (``<Prefix>`` e.g. ``Scientific``): ``.train/.valid/.test.inter`` rows ``user<TAB>history<TAB>target``
where ids are row numbers of ``.user2index`` / ``.item2index``, the train file holds every prefix of each
user's sequence, histories are capped (50); ``.text`` maps item asin -> text.

Output: one row per interaction with the original user and item ids and a synthetic timestamp equal to
the position in the user's sequence (UniSRec files carry no time), so RecBole's leave-one-out split
(order TO) gives exactly UniSRec's valid and test targets. ``.item`` has one ``text:token_seq`` column
(UniSRec's "title. categories. brand." string, cleaned). The sequence is rebuilt from the train prefixes
and checked against every line of the three files.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from dataset_prep.atomic import Staging, dataset_config, dataset_folder, write_json, write_tsv, write_yaml
from dataset_prep.errors import PrepError
from dataset_prep.streams import text_lines
from dataset_prep.text import clean_text

SPLITS = ("train", "valid", "test")
INTER_HEADER = ["user_id:token", "item_id:token", "timestamp:float"]
ITEM_HEADER = ["item_id:token", "text:token_seq"]
Example = tuple[int, list[int], int, int]  # user, history, target, line number


def import_unisrec(input_dir: Path, name: str, output: Path, prefix: str | None, max_seq_len: int) -> dict:
    """Convert; return the report (also written as ``report.json``)."""
    target = dataset_folder(output, name)
    prefix = prefix or _detect_prefix(input_dir)
    base = input_dir / prefix
    items = _index_file(Path(f"{base}.item2index"))
    users = _index_file(Path(f"{base}.user2index"))
    splits = {split: _read_split(Path(f"{base}.{split}.inter"), len(users), len(items)) for split in SPLITS}
    sequences = _rebuild(splits, base)
    _check(splits, sequences, base)
    texts = _read_text(Path(f"{base}.text"))

    user_col = np.concatenate([np.full(len(seq), u, np.int64) for u, seq in sequences.items()])
    item_col = np.concatenate([np.asarray(seq, np.int64) for seq in sequences.values()])
    position = np.concatenate([np.arange(len(seq), dtype=np.float64) for seq in sequences.values()])
    batch = pa.record_batch(
        [
            pa.array(users, pa.string()).take(pa.array(user_col)),
            pa.array(items, pa.string()).take(pa.array(item_col)),
            pa.array(position),
        ],
        names=["user_id", "item_id", "timestamp"],
    )
    used = sorted(set(item_col.tolist()))
    report = {
        "name": name,
        "source": str(base),
        "users": len(sequences),
        "items": len(used),
        "interactions": len(item_col),
        "lines": {split: len(rows) for split, rows in splits.items()},
        "items_without_text": sum(items[i] not in texts for i in used),
    }
    with Staging(target) as stage:
        write_tsv(stage.path(f"{name}.inter"), INTER_HEADER, [batch])
        with open(stage.path(f"{name}.item"), "w", encoding="utf-8") as out:
            out.write("\t".join(ITEM_HEADER) + "\n")
            out.writelines(f"{items[i]}\t{texts.get(items[i], '')}\n" for i in used)
        config = dataset_config(output, ["user_id", "item_id", "timestamp"], ["item_id", "text"], max_seq_len)
        write_yaml(stage.path(f"{name}.yaml"), config)
        write_json(stage.path("report.json"), report)
        stage.commit()
    return report


def _detect_prefix(folder: Path) -> str:
    if not folder.is_dir():
        raise PrepError(
            "cannot pick the UniSRec files: not a folder" if folder.exists() else "no such folder", folder
        )
    found = sorted(p.name[: -len(".train.inter")] for p in folder.glob("*.train.inter"))
    if len(found) != 1:
        what = "no *.train.inter file" if not found else f"several prefixes {found}; pass --prefix"
        raise PrepError(f"cannot pick the UniSRec files: {what}", folder)
    return found[0]


def _lines(path: Path) -> list[str]:
    """The file's lines (split at ``\\n`` only: U+2028 in an item's text is no line end), read within the
    bounds of :mod:`dataset_prep.streams`."""
    return [line for _, line in text_lines(path)]


def _index_file(path: Path) -> list[str]:
    """``token<TAB>index`` lines -> list where position ``index`` holds the token."""
    tokens: dict[int, str] = {}
    for number, line in enumerate(_lines(path), start=1):
        cells = line.split("\t")
        if len(cells) != 2 or not cells[1].isdigit():
            raise PrepError(f"expected 'token<TAB>index', got {line[:60]!r}", path, number)
        if int(cells[1]) in tokens:
            raise PrepError(f"index {cells[1]} appears twice", path, number)
        tokens[int(cells[1])] = cells[0]
    if sorted(tokens) != list(range(len(tokens))):
        raise PrepError("indices are not 0..n-1", path)
    return [tokens[i] for i in range(len(tokens))]


def _read_split(path: Path, n_users: int, n_items: int) -> list[Example]:
    rows = []
    lines = _lines(path)
    if not lines or lines[0].split("\t")[:3] != ["user_id:token", "item_id_list:token_seq", "item_id:token"]:
        raise PrepError(
            "expected header 'user_id:token<TAB>item_id_list:token_seq<TAB>item_id:token'", path, 1
        )
    for number, line in enumerate(lines[1:], start=2):
        try:
            user, history, target = line.split("\t")
            row = (int(user), [int(i) for i in history.split()], int(target), number)
        except ValueError:
            raise PrepError(
                f"expected 'user<TAB>item item ...<TAB>item', got {line[:60]!r}", path, number
            ) from None
        if not 0 <= row[0] < n_users or not all(0 <= i < n_items for i in [*row[1], row[2]]):
            raise PrepError("user or item index out of range of the *2index files", path, number)
        rows.append(row)
    return rows


def _rebuild(splits: dict[str, list[Example]], base: Path) -> dict[int, list[int]]:
    """Each test user's whole sequence: first train history + train targets (shortest history first),
    then the valid and test targets."""
    train: dict[int, list[Example]] = defaultdict(list)
    for row in splits["train"]:
        train[row[0]].append(row)
    valid = {row[0]: row for row in splits["valid"]}
    if not splits["test"]:
        raise PrepError("no test lines (only the header): nothing to import", f"{base}.test.inter")
    sequences = {}
    for user, _history, target, number in splits["test"]:
        if user not in valid:
            raise PrepError(f"user {user} has a test line but no valid line", f"{base}.test.inter", number)
        rows = train[user][::-1]  # the files list each user's prefixes longest first
        start = rows[0][1] + [r[2] for r in rows] if rows else valid[user][1]
        sequences[user] = [*start, valid[user][2], target]
    return sequences


def _check(splits: dict[str, list[Example]], sequences: dict[int, list[int]], base: Path) -> None:
    """Every line must be (last ``len(history)`` items before position p, item at p) of its user's sequence,
    with histories as long as the cap allows."""
    cap = max(len(row[1]) for rows in splits.values() for row in rows)
    for split, rows in splits.items():
        seen: dict[int, int] = defaultdict(int)
        for user, history, target, number in rows[::-1] if split == "train" else rows:
            seq = sequences.get(user)
            if seq is None:
                raise PrepError(f"user {user} has no test line", f"{base}.{split}.inter", number)
            position = {"valid": len(seq) - 2, "test": len(seq) - 1}.get(split, seen[user] + 1)
            seen[user] += 1
            ok = seq[position] == target and history == seq[max(0, position - len(history)) : position]
            if not ok or len(history) != min(position, cap):
                raise PrepError(
                    f"line does not match the sequence rebuilt from the train prefixes of user {user}",
                    f"{base}.{split}.inter",
                    number,
                )


def _read_text(path: Path) -> dict[str, str]:
    """``item_id:token<TAB>text:token_seq`` -> asin -> cleaned one-line text."""
    texts = {}
    for number, line in enumerate(_lines(path)[1:], start=2):
        asin, sep, text = line.partition("\t")
        if not sep:
            raise PrepError(f"expected 'item<TAB>text', got {line[:60]!r}", path, number)
        texts[asin] = clean_text(text)
    return texts
