"""Row filters, run in the engine over the interned interactions (:mod:`dataset_prep.table`).

:func:`stage_rows` builds table ``rows`` (user code, item code, position, time, rating) with ``stage``, the
first filter a row fails, in the order the filters run (:data:`STAGES`; 0 when it passes them all), so
drop reasons never overlap; :func:`apply_metadata` adds the metadata stages once the metadata is read.
:func:`duplicates` then marks, among the rows that pass, the repeats of a (user, item) pair (with
``--dedup all``, the exact duplicates only), and :func:`k_core` iterates to the k-core of what is left (tables
``alive_users`` and ``alive_items``) and marks the rows outside it. :data:`KEPT_ROWS` is the final selection:
the rows still at stage 0.

**Exact duplicates** (:func:`exact_duplicates_sql`, the one definition): rows of the same user, item and time,
beyond the first. They carry nothing the first does not (a repeat at another time is a new interaction),
and a time-ordered split puts a user's test target into that user's own history. Every data path drops them
and says how many: srt-prep here, and every RecBole dataset the plugin loads (any model, run by
``run_recbole``, ``srt-finetune`` or RecBole's own loaders) through :func:`exact_duplicate_rows`.
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
# stage k (1-based) of a row: the first of these filters it fails; then the repeats and the k-core
STAGES = (
    "malformed_line",
    "time_range",
    "rating_threshold",
    "missing_metadata",
    "missing_text",
    "excluded_user",
)
DUPLICATE, K_CORE = len(STAGES) + 1, len(STAGES) + 2


@dataclass
class Criteria:
    """What the row filters keep (None: no bound)."""

    start: float | None
    end: float | None
    min_rating: float | None
    drop_missing_meta: bool
    drop_missing_text: bool


def exact_duplicates_sql(table: str, where: str = "TRUE") -> str:
    """SQL selecting the position ``r`` of every exact duplicate among the rows of ``table`` (columns ``uc``
    user, ``ic`` item, ``ts`` time, ``r`` position) that satisfy ``where``: a row whose user, item and time
    a row before it (smaller ``r``) has, so the first of each is kept. A row without a time (NULL or NaN) is
    never one: nothing says it is the same interaction."""
    return f"""SELECT r FROM (
            SELECT r, row_number() OVER (PARTITION BY uc, ic, ts ORDER BY r) AS nth FROM {table}
            WHERE ({where}) AND NOT isnan(ts)
        ) WHERE nth > 1"""


def exact_duplicate_rows(users: object, items: object, times: object) -> np.ndarray:
    """The positions (0-based, ascending) of the exact duplicates (:func:`exact_duplicates_sql`) among the
    interactions given as three equally long columns (arrays or pandas Series), found in DuckDB."""
    import duckdb  # here, so that importing the filters does not load it
    import pyarrow as pa

    rows = pa.table(
        {"uc": users, "ic": items, "ts": pa.array(times, pa.float64()), "r": np.arange(len(times))}
    )
    with duckdb.connect() as con:
        con.register("interactions", rows)
        found = con.execute(exact_duplicates_sql("interactions")).fetchnumpy()["r"]
    return np.sort(np.asarray(found, dtype=np.int64))


def stage_rows(criteria: Criteria, dedup: str) -> list[tuple[str, list[object]]]:
    """The statements (and their parameters) that build table ``rows``, every row of ``raw`` with its codes
    and its stage but for the metadata stages (:func:`apply_metadata`), and table ``losers`` (see
    :func:`duplicates`). Needs ``users`` (token, code, ok, excluded) and ``items`` (token, code, ok); they
    run while the metadata is read. The repeats can be found before the metadata stages are known, because
    those stages, like the excluded-user stage, hold for every row of an item (or user), so for every row
    of a (user, item) pair alike."""
    # NumPy compared the float32 ratings with the threshold rounded to float32; NaN drops nothing.
    low = criteria.min_rating
    threshold = None if low is None or math.isnan(low) else float(np.float32(low))
    sql = """CREATE TABLE rows AS SELECT u.code AS uc, i.code AS ic, raw.r, raw.ts, raw.rating,
            (CASE WHEN NOT (u.ok AND i.ok) THEN 1
                  WHEN raw.ts < $1 OR raw.ts >= $2 THEN 2
                  WHEN raw.rating < $3 THEN 3
                  WHEN u.excluded THEN 6
                  ELSE 0 END)::UTINYINT AS stage
        FROM raw JOIN users u ON raw.user = u.token JOIN items i ON raw.item = i.token"""
    statements = [(sql, [criteria.start, criteria.end, threshold])]
    if dedup == "all":  # repeats at other times stay; exact duplicates carry nothing
        statements.append((f"CREATE TABLE losers AS {exact_duplicates_sql('rows', 'stage IN (0, 6)')}", []))
    else:
        way = "ASC" if dedup == "first" else "DESC"
        losers = f"""CREATE TABLE losers AS SELECT r FROM (
            SELECT r, row_number() OVER (PARTITION BY uc, ic ORDER BY ts {way}, r {way}) AS nth
            FROM rows SEMI JOIN (
                SELECT uc, ic FROM rows WHERE stage IN (0, 6) GROUP BY uc, ic HAVING count(*) > 1
            ) repeated USING (uc, ic)
            WHERE stage IN (0, 6)
        ) WHERE nth > 1"""
        statements.append((losers, []))
    return statements


def apply_metadata(engine: Engine, criteria: Criteria) -> None:
    """Give the rows of items without metadata (or without text) their stage, where the policy drops them:
    before the excluded-user stage, after the others. Needs ``items`` with ``has_meta`` and ``has_text``."""
    if criteria.drop_missing_meta or criteria.drop_missing_text:
        engine.run(
            """UPDATE rows SET stage = CASE WHEN i.has_meta THEN 5 ELSE 4 END FROM items i
            WHERE rows.ic = i.code AND rows.stage IN (0, 6)
                AND ((NOT i.has_meta AND $1) OR (i.has_meta AND NOT i.has_text AND $2))""",
            [criteria.drop_missing_meta, criteria.drop_missing_text],
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


def duplicates(engine: Engine, dedup: str) -> int:
    """Mark with stage :data:`DUPLICATE` the rows that pass every filter but repeat a (user, item) pair (table
    ``losers``): ``first`` keeps the earliest of a pair, ``last`` the latest (equal times: input order),
    ``all`` every row at its own time (the exact duplicates go). The number marked."""
    return engine.one(
        f"UPDATE rows SET stage = {DUPLICATE} FROM losers WHERE rows.r = losers.r AND rows.stage = 0"
    )[0]


def k_core(engine: Engine, min_user: int, min_item: int) -> tuple[int, tuple[int, int]]:
    """Iteratively drop users with fewer than ``min_user`` and items with fewer than ``min_item`` of the rows
    left after :func:`duplicates`, and mark their rows with stage :data:`K_CORE`; tables ``alive_users``
    (uc, n) and ``alive_items`` (ic, n) hold what stays, with its number of rows. Returns the rows dropped
    and, from before the k-core, the most rows of one user and of one item. Each round joins only with the
    (small) sets of users and items it drops."""
    count = """CREATE OR REPLACE TABLE alive_users AS SELECT uc, count(*) AS n FROM edges GROUP BY uc;
        CREATE OR REPLACE TABLE alive_items AS SELECT ic, count(*) AS n FROM edges GROUP BY ic"""
    engine.run(
        f"""CREATE TABLE edges AS SELECT uc, ic FROM rows WHERE stage = 0; {count};
        CREATE TABLE dead_users (uc INTEGER); CREATE TABLE dead_items (ic INTEGER)"""
    )
    before, most_user, most_item = engine.one(
        """SELECT (SELECT sum(n) FROM alive_users), (SELECT max(n) FROM alive_users),
            (SELECT max(n) FROM alive_items)"""
    )
    while True:
        engine.run(
            f"""CREATE OR REPLACE TABLE few_users AS SELECT uc FROM alive_users WHERE n < {min_user};
            CREATE OR REPLACE TABLE few_items AS SELECT ic FROM alive_items WHERE n < {min_item}"""
        )
        if not engine.one("SELECT (SELECT count(*) FROM few_users) + (SELECT count(*) FROM few_items)")[0]:
            break
        engine.run(
            f"""INSERT INTO dead_users SELECT uc FROM few_users;
            INSERT INTO dead_items SELECT ic FROM few_items;
            CREATE OR REPLACE TABLE edges AS
                SELECT * FROM edges ANTI JOIN few_users USING (uc) ANTI JOIN few_items USING (ic); {count}"""
        )
    dropped = (before or 0) - (engine.one("SELECT sum(n) FROM alive_users")[0] or 0)
    if dropped:
        engine.run(
            f"""UPDATE rows SET stage = {K_CORE} WHERE stage = 0
            AND (uc IN (SELECT uc FROM dead_users) OR ic IN (SELECT ic FROM dead_items))"""
        )
    engine.run("DROP TABLE edges; DROP TABLE few_users; DROP TABLE few_items")
    return dropped, (most_user or 0, most_item or 0)


# The rows that every filter keeps, in output order: by user code, then time, then input position.
KEPT_ROWS = "SELECT uc, ic, rating, ts FROM rows WHERE stage = 0 ORDER BY uc, ts, r"
