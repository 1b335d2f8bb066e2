"""Row filters, run in the engine over the interned interactions (:mod:`dataset_prep.table`).

:func:`stage_rows` builds table ``rows`` (user code, item code, position, time, rating) with ``stage``, the
first filter a row fails, in the order the filters run (:data:`STAGES`; 0 when it passes them all), so
drop reasons never overlap. :func:`duplicates` then picks, among the rows that pass, the repeats of a (user,
item) pair to drop (table ``losers``), and :func:`k_core` iterates to the k-core of what is left (tables
``alive_users`` and ``alive_items``). :data:`KEPT_ROWS` is the final selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dataset_prep.engine import Engine

DEDUP_POLICIES = ("first", "last", "all")
MISSING_POLICIES = ("drop", "keep")  # for items without metadata / without text
# stage k (1-based) of a row: the first of these filters it fails
STAGES = (
    "malformed_line",
    "time_range",
    "rating_threshold",
    "missing_metadata",
    "missing_text",
    "excluded_user",
)


@dataclass
class Criteria:
    """What the row filters keep (None: no bound)."""

    start: float | None
    end: float | None
    min_rating: float | None
    drop_missing_meta: bool
    drop_missing_text: bool


def stage_rows(engine: Engine, criteria: Criteria) -> None:
    """Table ``rows``: every row of ``raw`` with its codes and stage. Needs ``users`` (token, code, ok,
    excluded) and ``items`` (token, code, ok, has_meta, has_text)."""
    # NumPy compared the float32 ratings with the threshold rounded to float32; NaN drops nothing.
    threshold = (
        None if criteria.min_rating is None or math.isnan(criteria.min_rating) else criteria.min_rating
    )
    engine.run(
        """CREATE TABLE rows AS SELECT u.code AS uc, i.code AS ic, raw.r, raw.ts, raw.rating,
            (CASE WHEN NOT (u.ok AND i.ok) THEN 1
                  WHEN raw.ts < $1 OR raw.ts >= $2 THEN 2
                  WHEN raw.rating < $3 THEN 3
                  WHEN $4 AND NOT i.has_meta THEN 4
                  WHEN $5 AND i.has_meta AND NOT i.has_text THEN 5
                  WHEN u.excluded THEN 6
                  ELSE 0 END)::UTINYINT AS stage
        FROM raw JOIN users u ON raw.user = u.token JOIN items i ON raw.item = i.token""",
        [
            criteria.start,
            criteria.end,
            None if threshold is None else float(np.float32(threshold)),
            criteria.drop_missing_meta,
            criteria.drop_missing_text,
        ],
    )


@dataclass
class StageSummary:
    """Per stage the rows that fail there; the rows that pass every filter; the span of times after the
    malformed-id filter and of ratings after the time filter (None when no row is left there)."""

    dropped: dict[str, int]
    passed: int
    times: tuple[float, float] | None
    ratings: tuple[float, float] | None

    def left_after(self, stage: str) -> int:
        """Rows still kept after the filter ``stage``."""
        later = STAGES[STAGES.index(stage) + 1 :]
        return self.passed + sum(self.dropped[s] for s in later)


def summarise(engine: Engine) -> StageSummary:
    """Counts and spans of table ``rows`` in one pass."""
    counts = ", ".join(f"count(*) FILTER (WHERE stage = {k})" for k in range(1, len(STAGES) + 1))
    row = engine.one(
        f"""SELECT {counts}, count(*) FILTER (WHERE stage = 0),
            min(ts) FILTER (WHERE stage <> 1), max(ts) FILTER (WHERE stage <> 1),
            min(rating) FILTER (WHERE stage NOT IN (1, 2)), max(rating) FILTER (WHERE stage NOT IN (1, 2))
        FROM rows"""
    )
    n = len(STAGES)
    return StageSummary(
        dropped=dict(zip(STAGES, row[:n], strict=True)),
        passed=row[n],
        times=None if row[n + 1] is None else (row[n + 1], row[n + 2]),
        ratings=None if row[n + 3] is None else (row[n + 3], row[n + 4]),
    )


def duplicates(engine: Engine, policy: str) -> int:
    """Table ``losers``: the positions of the rows that pass every filter but repeat a (user, item) pair;
    ``first`` keeps the earliest of a pair, ``last`` the latest (equal times: input order), ``all`` none."""
    if policy == "all":
        engine.run("CREATE TABLE losers (r BIGINT)")
        return 0
    way = "ASC" if policy == "first" else "DESC"
    engine.run(
        f"""CREATE TABLE losers AS SELECT r FROM (
            SELECT r, row_number() OVER (PARTITION BY uc, ic ORDER BY ts {way}, r {way}) AS nth
            FROM rows SEMI JOIN (
                SELECT uc, ic FROM rows WHERE stage = 0 GROUP BY uc, ic HAVING count(*) > 1
            ) repeated USING (uc, ic)
            WHERE stage = 0
        ) WHERE nth > 1"""
    )
    return engine.one("SELECT count(*) FROM losers")[0]


def k_core(engine: Engine, min_user: int, min_item: int) -> tuple[int, tuple[int, int]]:
    """Iteratively drop users with fewer than ``min_user`` and items with fewer than ``min_item`` of the rows
    left after :func:`duplicates`; tables ``alive_users`` (uc) and ``alive_items`` (ic) hold what stays.
    Returns the rows dropped and, from before the k-core, the most rows of one user and of one item."""
    engine.run("CREATE TABLE edges AS SELECT uc, ic FROM rows ANTI JOIN losers USING (r) WHERE stage = 0")
    before, most_user, most_item = engine.one(
        """SELECT (SELECT count(*) FROM edges),
            (SELECT max(n) FROM (SELECT count(*) AS n FROM edges GROUP BY uc)),
            (SELECT max(n) FROM (SELECT count(*) AS n FROM edges GROUP BY ic))"""
    )
    after = before
    if min_user > 1 or min_item > 1:  # every user and item of an edge has one at least
        while True:
            engine.run(
                f"""CREATE OR REPLACE TABLE few_users AS
                    SELECT uc FROM edges GROUP BY uc HAVING count(*) < {min_user};
                CREATE OR REPLACE TABLE few_items AS
                    SELECT ic FROM edges GROUP BY ic HAVING count(*) < {min_item}"""
            )
            if not engine.one("SELECT (SELECT count(*) FROM few_users) + (SELECT count(*) FROM few_items)")[
                0
            ]:
                break
            engine.run(
                """CREATE OR REPLACE TABLE edges AS
                SELECT * FROM edges ANTI JOIN few_users USING (uc) ANTI JOIN few_items USING (ic)"""
            )
            after = engine.one("SELECT count(*) FROM edges")[0]
    engine.run(
        """CREATE TABLE alive_users AS SELECT DISTINCT uc FROM edges;
        CREATE TABLE alive_items AS SELECT DISTINCT ic FROM edges;
        DROP TABLE edges"""
    )
    return before - after, (most_user or 0, most_item or 0)


# The rows that every filter keeps, in output order: by user code, then time, then input position.
KEPT_ROWS = """SELECT uc, ic, rating, ts FROM rows ANTI JOIN losers USING (r)
    WHERE stage = 0 AND uc IN (SELECT uc FROM alive_users) AND ic IN (SELECT ic FROM alive_items)
    ORDER BY uc, ts, r"""
