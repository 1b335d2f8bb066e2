"""SRT's dataset: RecBole's ``SequentialDataset`` with a choice of training rows (``train_rows``).

RecBole turns each user's sequence into one training row per prefix (``<i1> -> i2``, ``<i1, i2> -> i3``,
...). With ``train_all_positions`` on top of that, an early item is a target in about ``L`` rows.
``train_rows: sequences`` keeps, per user, only the rows that end a window of ``MAX_ITEM_LIST_LENGTH``
items, counted back from the last training target: each training item is then the target of exactly
one position of one row, as decoder-only models train (Zhang et al.). SRT trains every position of
those rows. Validation and test rows are RecBole's, unchanged.

RecBole's ``create_dataset`` finds this class by name (``recbole.data.dataset.SRTDataset``, set by
:mod:`recbole_srt.registration`).
"""

from __future__ import annotations

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset

TRAIN_ROWS = ("prefixes", "sequences")


def window_ends(users: np.ndarray, order: np.ndarray, window: int) -> np.ndarray:
    """Indices of the rows to keep: per user (in ``order``, oldest target first), the last row and
    every ``window``-th row before it."""
    rows = np.lexsort((np.arange(len(users)), order, users))  # by user, then time, then position
    sorted_users = users[rows]
    last_of_user = np.r_[np.flatnonzero(sorted_users[1:] != sorted_users[:-1]), len(rows) - 1]
    group_end = np.repeat(last_of_user, np.diff(np.r_[-1, last_of_user]))
    from_end = group_end - np.arange(len(rows))
    return np.sort(rows[from_end % window == 0])


class SRTDataset(SequentialDataset):
    """``SequentialDataset`` whose training split follows ``train_rows`` (see the module docstring)."""

    def build(self):
        datasets = super().build()
        mode = self.config["train_rows"]
        if mode not in TRAIN_ROWS:
            raise ValueError(f"train_rows must be one of {TRAIN_ROWS}, got {mode!r}")
        if mode == "sequences":
            train = datasets[0]
            inter = train.inter_feat
            keep = window_ends(
                inter[self.uid_field].numpy(), inter[self.time_field].numpy(), self.max_item_list_len
            )
            datasets[0] = train.copy(inter[torch.from_numpy(keep)])
        return datasets
