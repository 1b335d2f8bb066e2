"""SRTDataset: RecBole finds it by name; train_rows: sequences keeps one row per window."""

from __future__ import annotations

import numpy as np
from conftest import tiny_config, write_tiny_dataset
from recbole.data import create_dataset, data_preparation

from recbole_srt.data import SRTDataset, window_ends
from recbole_srt.pipeline import make_config


def test_window_ends_count_back_from_each_users_last_row():
    users = np.array([7, 7, 7, 7, 7, 3, 3])
    order = np.array([1, 2, 3, 4, 5, 1, 2])
    assert window_ends(users, order, window=2).tolist() == [0, 2, 4, 6]
    shuffled = np.array([4, 0, 6, 2, 1, 3, 5])  # the same rows in another order
    assert sorted(shuffled[window_ends(users[shuffled], order[shuffled], 2)]) == [0, 2, 4, 6]


def test_sequences_mode_makes_every_training_target_a_target_exactly_once(tmp_path):
    write_tiny_dataset(tmp_path, n_users=20)

    def train_rows(mode: str):
        config = make_config(
            "SRT", "tiny", config_dict=tiny_config(tmp_path, MAX_ITEM_LIST_LENGTH=4, train_rows=mode)
        )
        dataset = create_dataset(config)
        assert isinstance(dataset, SRTDataset)
        train, valid, _ = data_preparation(config, dataset)
        return train._dataset.inter_feat, len(valid._dataset)

    prefixes, n_valid = train_rows("prefixes")
    sequences, n_valid_too = train_rows("sequences")
    assert n_valid == n_valid_too == 20 and len(sequences) < len(prefixes)
    # position j of a window row predicts its item j + 1, the last position the row's target: together the
    # windows predict every (user, target) of the prefix rows exactly once
    columns = ("user_id", "item_id_list", "item_length", "item_id")
    rows = zip(*(sequences[c] for c in columns), strict=True)
    predicted = [(int(u), i) for u, seq, n, t in rows for i in [*seq[1:n].tolist(), int(t)]]
    expected = [(int(u), int(t)) for u, t in zip(prefixes["user_id"], prefixes["item_id"], strict=True)]
    assert sorted(predicted) == sorted(expected)
