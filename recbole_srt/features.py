"""The feature matrix of a RecBole dataset: row ``i`` = internal item id ``i``, used by training.

1. **Texts** (:mod:`recbole_srt.catalog`): each item's text from the dataset's ``.item`` file.
2. **Vectors** (:mod:`recbole_srt.encoder`): encoded by the configured :class:`ItemEncoder`, through its
   content-keyed store; or a user-supplied ``.npy`` (``item_feature_file``).
3. **Alignment** (:func:`align_to_internal_ids`): row ``i`` = internal id ``i``, row 0 (padding) zeros;
   items without text follow ``missing_text`` (``empty``: the empty string's vector; ``error``: stop).
4. **Checking** (:func:`check_feature_size`): features must have the width the item tower was built for.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from recbole_srt.catalog import ItemFeatureError, ItemTexts, check_text_coverage, read_item_texts
from recbole_srt.encoder import ItemEncoder

logger = logging.getLogger(__name__)


def check_feature_size(expected: int, features: torch.Tensor | np.ndarray, source: str) -> None:
    """The item tower takes ``expected``-dim features; ``features`` (from ``source``) must match."""
    actual = features.shape[1]
    if actual != expected:
        raise ItemFeatureError(
            f"the item tower takes {expected}-dim features; {source}: {actual}-dim "
            "(a different text_encoder or item_feature_file?)"
        )


def _no_row_error(absent: list[str]) -> ItemFeatureError:
    return ItemFeatureError(
        f"{len(absent)} items have no feature row (e.g. {absent[:5]}); "
        "set missing_text: empty to encode them as the empty string"
    )


def align_to_internal_ids(
    id2token: Sequence[str], tokens: Sequence[str], matrix: np.ndarray, missing: np.ndarray | None
) -> tuple[np.ndarray, list[str]]:
    """Reorder ``matrix`` (row ``j`` = ``tokens[j]``) so that row ``i`` = internal id ``i``.

    Internal id 0 is RecBole's padding and gets zeros. Ids whose token has no row get ``missing``
    (a vector) and are returned in the list of missing tokens; with ``missing=None`` they raise.
    """
    row_of = {token: j for j, token in enumerate(tokens)}
    rows = np.array([row_of.get(token, -1) for token in id2token[1:]], dtype=np.int64)
    absent = [id2token[i + 1] for i in np.flatnonzero(rows < 0)]
    if absent and missing is None:
        raise _no_row_error(absent)
    padded = np.concatenate([matrix, np.zeros((1, matrix.shape[1]), np.float32)])
    if missing is not None:
        padded[-1] = missing  # row -1: what an item without a row gets
    aligned = np.take(padded, np.concatenate([[-1], rows]), axis=0)  # np.take: fancy indexing is ~8x slower
    aligned[0] = 0.0
    return aligned, absent


def _supplied_features(npy: Path, item_tokens) -> tuple[list[str], np.ndarray]:
    """A user's precomputed matrix and its row tokens: ``<stem>.ids`` (one per line) or ``.item`` order.

    It must be a 2-D float ``.npy`` array (never unpickled) of finite numbers.
    """
    if not npy.is_file():
        raise ItemFeatureError(f"{npy}: no such item_feature_file")
    try:
        matrix = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # pickled object arrays, truncated files, not .npy
        raise ItemFeatureError(f"{npy}: not a readable .npy array ({error})") from None
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        kind = f"a {matrix.ndim}-D {matrix.dtype} array" if isinstance(matrix, np.ndarray) else "an .npz file"
        raise ItemFeatureError(f"{npy}: {kind}; item_feature_file must be a 2-D float array [items, F]")
    with np.errstate(over="ignore"):  # a finite float64 too large for float32 becomes Inf: refused below
        matrix = matrix.astype(np.float32)
    ids_file = npy.with_suffix(".ids")
    tokens = ids_file.read_text(encoding="utf-8").splitlines() if ids_file.is_file() else item_tokens()
    if matrix.shape[0] != len(tokens):
        raise ItemFeatureError(f"{npy}: shape {matrix.shape} does not match its {len(tokens)} item ids")
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise ItemFeatureError(
            f"{npy}: row {bad[0]} (0-based; item {tokens[bad[0]]!r}) holds NaN or Inf as float32 "
            f"({bad.size} of {len(tokens)} rows); SRT cannot train on it"
        )
    return tokens, matrix


def load_item_features(config, dataset, encoder: ItemEncoder | None = None) -> torch.Tensor:
    """The frozen feature matrix ``[n_items, F]`` of a RecBole ``dataset``, row ``i`` = internal id ``i``."""
    item_id = config["ITEM_ID_FIELD"]
    item_file = Path(config["data_path"]) / f"{config['dataset']}.item"
    policy = config["missing_text"]
    if policy not in ("empty", "error"):
        raise ItemFeatureError(f"missing_text must be 'empty' or 'error', got {policy!r}")

    def item_texts() -> ItemTexts:
        return read_item_texts(
            item_file, item_id, config["text_fields"], config["field_separator"], config["encoding"]
        )

    if config["item_feature_file"] is None:
        texts = item_texts()
        text_of = dict(zip(texts.tokens, texts.texts, strict=True))
        used = dataset.field2id_token[item_id][1:]
        empty = [token for token in used if text_of.get(token) == ""]
        absent = [token for token in used if token not in text_of]
        if empty and policy == "error":
            raise ItemFeatureError(
                f"{len(empty)} items have empty text (e.g. {empty[:5]}) and missing_text=error"
            )
        if absent and policy == "error":
            raise _no_row_error(absent)
        source = f"dataset {config['dataset']} ({item_file})"
        check_text_coverage(len(empty) + len(absent), len(used), source, texts.fields)
        encoder = encoder or ItemEncoder.from_config(config)
        # What "auto" chose here goes into the config, and so into checkpoints: fine-tuning and
        # serving on another device then encode new texts the way training did.
        config["text_encoder_backend"], config["text_encoder_precision"] = encoder.backend, encoder.precision
        # In internal-id order with the padding row: a dataset loaded again gets the store's memory map
        return torch.from_numpy(encoder.vectors([text_of.get(token, "") for token in used], padding_row=True))

    tokens, matrix = _supplied_features(Path(config["item_feature_file"]), lambda: item_texts().tokens)
    missing = None if policy == "error" else np.zeros(matrix.shape[1], dtype=np.float32)
    aligned, absent = align_to_internal_ids(dataset.field2id_token[item_id], tokens, matrix, missing)
    if absent:
        logger.warning(
            "%d of %d items have no row in %s (e.g. %s); they get zeros (missing_text=empty)",
            len(absent),
            len(aligned) - 1,
            config["item_feature_file"],
            absent[:5],
        )
    return torch.from_numpy(aligned)
