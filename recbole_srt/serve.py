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
as in training (:mod:`recbole_srt.catalog`), and it is encoded with the
checkpoint's ``text_encoder``; vectors come from (and go to) the encoder's content-keyed store.

Checkpoints are read without unpickling code (:mod:`recbole_srt.checkpoint`); RecBole's full-pickle
format (older SRT checkpoints) is refused unread.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from recbole_srt.catalog import check_text_coverage, read_catalog
from recbole_srt.checkpoint import CheckpointError, feature_size, load_srt_checkpoint
from recbole_srt.cli import quiet_library_warnings, user_errors
from recbole_srt.encoder import ItemEncoder
from recbole_srt.features import check_feature_size
from recbole_srt.model.srt import SRT

logger = logging.getLogger(__name__)


class ServeError(ValueError):
    """A catalog, history or device that cannot be served."""


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device ``name``; :class:`ServeError` if torch does not know it or it is not available."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ServeError(f"unknown device {str(name)!r} ({error})") from None
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and not (hasattr(backend, "is_available") and backend.is_available()):
        raise ServeError(f"device {device}: {device.type.upper()} is not available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ServeError(f"device {device}: only {torch.cuda.device_count()} CUDA devices are visible")
    return device


class Recommender:
    """A trained SRT over a catalog of ``item id -> text``; see the module docstring."""

    def __init__(self, model: SRT, item_ids: Sequence[str], texts: Sequence[str], encoder: ItemEncoder):
        self.model = model.eval()
        self.encoder = encoder
        self.item_ids, self.texts = list(item_ids), list(texts)
        self._row = {item: row for row, item in enumerate(self.item_ids, 1)}  # row 0 is padding

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        catalog: str | Path,
        device: str = "cpu",
        *,
        text_encoder: str | None = None,
    ) -> Recommender:
        """The checkpoint's SRT over ``catalog``'s items, encoded with its ``text_encoder`` (cached in the
        store of ``$RECBOLE_SRT_CACHE``, never where the checkpoint says). ``text_encoder``: the encoder to
        load, which must be the one the checkpoint was trained with; needed when that was a local folder
        (:func:`recbole_srt.encoder.encoder_for_checkpoint`)."""
        device = resolve_device(device)
        saved = load_srt_checkpoint(checkpoint, device, {"text_encoder": text_encoder})
        config = saved["config"]
        if config["item_feature_file"] is not None:
            raise CheckpointError(
                f"{checkpoint}: trained on precomputed features (item_feature_file), not on text; new items "
                "cannot be encoded the same way"
            )
        config["device"] = device
        items = read_catalog(catalog, config["ITEM_ID_FIELD"], config["text_fields"])
        if not items.tokens:
            raise ServeError(f"{catalog}: the catalog has no items")
        n_empty = sum(not text for text in items.texts)
        check_text_coverage(n_empty, len(items.texts), f"catalog {catalog}", items.fields)
        encoder = ItemEncoder.from_config(config, str(device))
        features = torch.from_numpy(encoder.vectors(items.texts, padding_row=True))
        check_feature_size(feature_size(saved["state_dict"]), features, f"{encoder.name} on {catalog}")
        config["item_id_embedding"] = "none"  # a catalog file carries no RecBole ids: items are their text
        model = SRT(config, item_features=features)
        if model.load_transferred(saved["state_dict"]):
            logger.warning(
                "%s: its item-ID table belongs to its training data's internal ids; %s's items are scored "
                "by their text alone",
                checkpoint,
                catalog,
            )
        return cls(model.to(device), items.tokens, items.texts, encoder)

    def add_items(self, items: Mapping[str, str]) -> None:
        """Make new items recommendable from their text (``item id -> text``); no retraining."""
        clash = [item for item in items if item in self._row]
        if clash:
            raise ServeError(f"already in the catalog: {clash[:10]}")
        if "" in items:
            raise ServeError("an item id cannot be empty")
        if not items:
            return
        new = torch.from_numpy(self.encoder.vectors(list(items.values()))).to(self.model.item_features)
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
        left = int(torch.isfinite(scores).sum())
        if left == 0:
            raise ServeError(
                "every catalog item is in the history: nothing left to recommend (include_history)"
            )
        top = torch.topk(scores, min(k, left))
        return [
            (self.item_ids[row - 1], float(score))
            for score, row in zip(top.values, top.indices.tolist(), strict=True)
        ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="srt-recommend", description="Top-k items for a history with a trained SRT checkpoint."
    )
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
    parser.add_argument(
        "--text-encoder",
        help="the encoder to load: the checkpoint's own (default); a folder when it was trained with one",
    )
    args = parser.parse_args(argv)
    if args.k < 1:  # checked before anything is loaded
        parser.error(f"-k must be at least 1, got {args.k}")
    ids = [item for item, _ in args.new_item]  # checked before anything is loaded
    if "" in ids or len(set(ids)) < len(ids):
        parser.error(f"--new-item ids must be non-empty and distinct, got {ids}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_library_warnings()
    with user_errors("srt-recommend") as failed:
        recommender = Recommender.from_checkpoint(
            args.checkpoint, args.catalog, args.device, text_encoder=args.text_encoder
        )
        recommender.add_items(dict(args.new_item))
        top = recommender.recommend(args.history, args.k, exclude_history=not args.include_history)
    if failed:
        return failed.status
    text = dict(zip(recommender.item_ids, recommender.texts, strict=True))
    if args.json:
        rows = [{"item_id": item, "score": score, "text": text[item]} for item, score in top]
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'rank':>4}  {'score':>8}  {'item_id':<16}  text")
    for rank, (item, score) in enumerate(top, 1):
        print(f"{rank:>4}  {score:8.3f}  {item:<16}  {text[item][:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
