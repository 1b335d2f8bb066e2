"""Recommend with a trained SRT checkpoint over any catalog, items never seen in training included.

SRT scores an item from its text alone (frozen text features -> trained item tower), so a
catalog is just ``item id -> text``: an item becomes recommendable the moment its text is added,
with no retraining. ::

    rec = Recommender.from_checkpoint("saved/SRT-....pth", "data/scientific/scientific.item")
    rec.add_items({"new-42": "Nitrile lab gloves. Industrial & Scientific. Acme"})
    rec.recommend(["B00TNNWMXI", "B00IBZE2EQ"], k=10)   # [(item_id, score), ...], best first

A catalog is a RecBole ``.item`` atomic file (the checkpoint's ``text_fields``), a ``.jsonl`` file
(one object a line: ``item_id`` and text fields) or a ``.tsv`` file with a header row (first
column the id, the others text). An item's text is its non-empty text fields joined by ``". "``,
as in training (:func:`recbole_srt.features.read_item_texts`), and it is encoded with the
checkpoint's ``text_encoder``; the catalog's features are cached beside it.

Checkpoints are RecBole pickles (they hold its ``Config``): :func:`load_srt_checkpoint` unpickles
them, so only load checkpoint files you trust, such as your own training runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch

from recbole_srt.features import (
    ItemFeatureError,
    ItemTexts,
    cached_text_features,
    encode_texts,
    encoder_slug,
    read_item_texts,
)
from recbole_srt.model.srt import SRT

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A file that is not a readable RecBole checkpoint of an SRT model."""


class ServeError(ValueError):
    """A catalog or history that cannot be served."""


def load_srt_checkpoint(path: str | Path, device: str = "cpu") -> dict:
    """Read a RecBole checkpoint of an SRT model: ``{"config": Config, "state_dict": {...}, ...}``.

    Unpickles the file (``weights_only=False``, RecBole stores its ``Config`` object): trusted files only.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # any unreadable file: zip, pickle, EOF, ... errors
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from error
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= checkpoint.keys():
        raise CheckpointError(f"{path}: not a RecBole checkpoint (no 'config' and 'state_dict')")
    model = checkpoint["config"]["model"]
    if model != "SRT":
        raise CheckpointError(f"{path}: a {model} checkpoint; only SRT scores items from their text")
    return checkpoint


def _join(values: Sequence[str]) -> str:
    return ". ".join(value.strip() for value in values if value.strip())


def read_catalog(
    path: str | Path, item_id_field: str = "item_id", text_fields: Sequence[str] | None = None
) -> ItemTexts:
    """Item ids and texts of a ``.item``, ``.jsonl`` or ``.tsv`` catalog (first row of a repeated id kept).

    ``text_fields``: the fields composing the text, in order; ``None`` = every field but the id.
    """
    path = Path(path)
    if not path.is_file():
        raise ServeError(f"{path}: no such catalog file")
    if path.suffix == ".item":
        return read_item_texts(path, item_id_field, text_fields)
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        frame = pd.DataFrame.from_records(records).fillna("").astype(str)
    elif path.suffix == ".tsv":
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
        frame = frame.rename(columns={frame.columns[0]: item_id_field})
    else:
        raise ServeError(f"{path}: a catalog is a .item, .jsonl or .tsv file")
    if item_id_field not in frame.columns:
        raise ServeError(f"{path}: no {item_id_field!r} field (fields: {list(frame.columns)})")
    fields = list(text_fields or [c for c in frame.columns if c != item_id_field])
    unknown = [f for f in fields if f not in frame.columns]
    if unknown or not fields:
        raise ServeError(f"{path}: text fields {fields} not usable; the file has {list(frame.columns)}")
    duplicates = int(frame.duplicated(item_id_field).sum())
    frame = frame.drop_duplicates(item_id_field)
    texts = [_join(row) for row in frame[fields].itertuples(index=False)]
    return ItemTexts(frame[item_id_field].tolist(), texts, fields, duplicates)


def _cache_stem(catalog: Path, encoder: str) -> Path:
    """Beside the catalog (the training cache itself for a dataset's ``.item``), else ~/.cache."""
    folder = catalog.parent if os.access(catalog.parent, os.W_OK) else Path.home() / ".cache" / "recbole_srt"
    return folder / f"{catalog.stem}.srt-{encoder_slug(encoder)}"


class _Catalog:
    """What SRT's constructor reads from a RecBole dataset: the item count and (no) training targets."""

    def __init__(self, n_items: int, item_id_field: str):
        self.n_items = n_items
        self.inter_feat = {item_id_field: torch.zeros(0, dtype=torch.long)}

    def num(self, field: str) -> int:
        return self.n_items


class Recommender:
    """A trained SRT over a catalog of ``item id -> text``; see the module docstring."""

    def __init__(self, model: SRT, item_ids: Sequence[str], texts: Sequence[str], encoder: str):
        self.model = model.eval()
        self.encoder = encoder
        self.item_ids, self.texts = list(item_ids), list(texts)
        self._row = {item: row for row, item in enumerate(self.item_ids, 1)}  # row 0 is padding

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, catalog: str | Path, device: str = "cpu") -> Recommender:
        """The checkpoint's SRT over ``catalog``'s items, encoded with its ``text_encoder`` (cached)."""
        saved = load_srt_checkpoint(checkpoint, device)
        config = saved["config"]
        if config["item_feature_file"] is not None:
            raise CheckpointError(
                f"{checkpoint}: trained on precomputed features ({config['item_feature_file']}), "
                "not on text; new items cannot be encoded the same way"
            )
        config["device"] = torch.device(device)
        items = read_catalog(catalog, config["ITEM_ID_FIELD"], config["text_fields"])
        if not items.tokens:
            raise ServeError(f"{catalog}: the catalog has no items")
        encoder = config["text_encoder"]
        matrix, _ = cached_text_features(
            items, encoder, _cache_stem(Path(catalog), encoder), config["text_encoder_batch_size"], device
        )
        features = torch.cat([torch.zeros(1, matrix.shape[1]), torch.from_numpy(matrix)])
        expected = saved["state_dict"]["item_tower.feature_mean"].shape[0]
        if features.shape[1] != expected:
            raise CheckpointError(
                f"{checkpoint}: its item tower takes {expected}-dim features, "
                f"{encoder} gives {features.shape[1]}-dim ones"
            )
        model = SRT(config, _Catalog(len(features), config["ITEM_ID_FIELD"]), item_features=features)
        model.load_state_dict(saved["state_dict"])
        return cls(model.to(device), items.tokens, items.texts, encoder)

    def add_items(self, items: Mapping[str, str]) -> None:
        """Make new items recommendable from their text (``item id -> text``); no retraining."""
        clash = [item for item in items if item in self._row]
        if clash:
            raise ServeError(f"already in the catalog: {clash[:10]}")
        if not items:
            return
        vectors = encode_texts(
            list(items.values()), self.encoder, device=str(self.model.item_features.device)
        )
        new = torch.from_numpy(vectors).to(self.model.item_features)
        self.model.item_features = torch.cat([self.model.item_features, new])
        for item, text in items.items():
            self.item_ids.append(item)
            self.texts.append(text)
            self._row[item] = len(self.item_ids)

    @torch.no_grad()
    def recommend(
        self, history: Sequence[str], k: int = 10, exclude_history: bool = True
    ) -> list[tuple[str, float]]:
        """The ``k`` best items after ``history`` (item ids, oldest first) as ``(item_id, score)``."""
        if not history:
            raise ServeError("the history is empty: SRT needs at least one item the user interacted with")
        if k < 1:
            raise ServeError(f"k must be at least 1, got {k}")
        unknown = [item for item in history if item not in self._row]
        if unknown:
            raise ServeError(
                f"{len(unknown)} history items are not in the catalog: {unknown[:10]}; "
                "add them with their text (a catalog row or add_items)"
            )
        model = self.model
        rows = [self._row[item] for item in history][-model.max_seq_length :]
        sequence = torch.zeros(1, model.max_seq_length, dtype=torch.long)
        sequence[0, : len(rows)] = torch.tensor(rows)
        batch = {
            model.ITEM_SEQ: sequence.to(model.item_features.device),
            model.ITEM_SEQ_LEN: torch.tensor([len(rows)]),
        }
        scores = model.full_sort_predict(batch)[0].cpu()  # [N], padding -inf
        if exclude_history:
            scores[[self._row[item] for item in history]] = float("-inf")
        top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum())))
        return [
            (self.item_ids[row - 1], float(score))
            for score, row in zip(top.values, top.indices.tolist(), strict=True)
        ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Top-k items for a history with a trained SRT checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="SRT checkpoint (.pth) written by RecBole")
    parser.add_argument("--catalog", required=True, help="the items to rank: .item, .jsonl or .tsv")
    parser.add_argument(
        "--history", nargs="+", required=True, help="item ids the user interacted with, oldest first"
    )
    parser.add_argument(
        "--new-item",
        nargs=2,
        action="append",
        default=[],
        metavar=("ID", "TEXT"),
        help="add an item (repeatable)",
    )
    parser.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    parser.add_argument("--include-history", action="store_true", help="may recommend items of the history")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        recommender = Recommender.from_checkpoint(args.checkpoint, args.catalog, args.device)
        recommender.add_items(dict(args.new_item))
        top = recommender.recommend(args.history, args.k, exclude_history=not args.include_history)
    except (CheckpointError, ServeError, ItemFeatureError) as error:
        print(f"srt-recommend: error: {error}", file=sys.stderr)
        return 2
    text = dict(zip(recommender.item_ids, recommender.texts, strict=True))
    if args.json:
        print(
            json.dumps(
                [{"item_id": item, "score": score, "text": text[item]} for item, score in top], indent=1
            )
        )
        return 0
    print(f"{'rank':>4}  {'score':>8}  {'item_id':<16}  text")
    for rank, (item, score) in enumerate(top, 1):
        print(f"{rank:>4}  {score:8.3f}  {item:<16}  {text[item][:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
