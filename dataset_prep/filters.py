"""Row filters over compact interaction arrays. Each takes the ``keep`` mask, clears the rows it drops
(among those still kept) and returns how many it dropped, so drop reasons never overlap."""

from __future__ import annotations

import numpy as np

DEDUP_POLICIES = ("first", "last", "all")
MISSING_POLICIES = ("drop", "keep")  # for items without metadata / without text


def drop(keep: np.ndarray, bad: np.ndarray) -> int:
    """Clear ``keep`` where ``bad``; the number of rows newly dropped."""
    newly = keep & bad
    keep &= ~bad
    return int(newly.sum())


def time_range(ts: np.ndarray, keep: np.ndarray, start: float | None, end: float | None) -> int:
    """Keep ``start <= ts < end`` (either bound optional, seconds)."""
    bad = np.zeros(len(ts), bool)
    if start is not None:
        bad |= ts < start
    if end is not None:
        bad |= ts >= end
    return drop(keep, bad)


def min_rating(rating: np.ndarray, keep: np.ndarray, threshold: float | None) -> int:
    """Keep ``rating >= threshold``."""
    return 0 if threshold is None else drop(keep, rating < threshold)


def by_code(codes: np.ndarray, keep: np.ndarray, bad_codes: np.ndarray) -> int:
    """Drop rows whose code is flagged in the boolean array ``bad_codes``."""
    return drop(keep, bad_codes[codes])


def user_time_order(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row indices sorted by (user, time); equal times keep input order.

    One stable sort of a packed int64 key ``user << bits | ticks`` when the times are whole seconds or
    milliseconds and fit beside the user code (always for real Amazon data), else two stable sorts."""
    if len(ts) and len(user):
        user_bits = int(user.max()).bit_length()
        # Whole seconds exactly, or milliseconds up to the float error of ms / 1000 (far below 1 us).
        for per_second, tolerance in ((1, 0.0), (1000, 1e-3)):
            ticks = ts * per_second
            ticks -= ticks.min()
            whole = np.round(ticks)
            span = whole.max()
            if not span < 2.0**62:  # also catches inf
                continue
            ticks -= whole  # in place: the rounding error
            shift = int(span).bit_length()
            if user_bits + shift <= 63 and np.abs(ticks, out=ticks).max() <= tolerance:
                del ticks
                key = user.astype(np.int64)
                key <<= shift
                key |= whole.astype(np.int64)
                del whole
                return np.argsort(key, kind="stable")
    by_time = np.argsort(ts, kind="stable")
    return by_time[np.argsort(user[by_time], kind="stable")]


def duplicates(user: np.ndarray, item: np.ndarray, keep: np.ndarray, order: np.ndarray, policy: str) -> int:
    """Keep one row per (user, item): the earliest (``first``) or latest (``last``) by time, ties by
    input order; ``all`` keeps repeats. ``order`` is :func:`user_time_order`."""
    if policy == "all":
        return 0
    rows = order[keep[order]].astype(np.int32 if len(keep) < 2**31 else np.int64)
    if not len(rows):
        return 0
    pair = user[rows].astype(np.int64)
    pair <<= 32
    pair |= item[rows]
    by_pair = np.argsort(pair, kind="stable")  # groups the pairs, each group in time order
    pair = pair[by_pair]
    change = pair[1:] != pair[:-1]
    del pair
    chosen = np.r_[True, change] if policy == "first" else np.r_[change, True]
    bad = np.zeros(len(keep), bool)
    bad[rows[by_pair[~chosen]]] = True
    return drop(keep, bad)


def k_core(
    user: np.ndarray,
    item: np.ndarray,
    keep: np.ndarray,
    sizes: tuple[int, int],
    min_user: int,
    min_item: int,
) -> int:
    """Iteratively drop users with fewer than ``min_user`` and items with fewer than ``min_item`` rows
    (``sizes`` = number of user codes, number of item codes)."""
    dropped = 0
    while True:
        users, items = user[keep], item[keep]
        few_users = np.bincount(users, minlength=sizes[0]) < min_user
        few_items = np.bincount(items, minlength=sizes[1]) < min_item
        if not (few_users[users].any() or few_items[items].any()):
            return dropped
        dropped += drop(keep, few_users[user] | few_items[item])
