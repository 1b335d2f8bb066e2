"""Exact record layouts of each Amazon release (pure data, no parsing).

2014 ratings CSV is ``user,item,rating,timestamp``; 2018 ratings CSV is ``item,user,rating,timestamp``
(item first); both have no header. The 2023 rating-only benchmark CSVs start with the header
``user_id,parent_asin,rating,timestamp`` (milliseconds). 2014/2018 review lines use
``reviewerID``/``asin``/``overall``/``unixReviewTime`` (seconds); 2023 review lines use
``user_id``/``parent_asin``/``rating``/``timestamp`` (milliseconds). 2014 metadata lines are Python dict
literals; 2018 and 2023 metadata lines are strict JSON.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CsvLayout:
    """A ratings CSV: the position of each column, and its header line if it has one."""

    user_col: int
    item_col: int
    rating_col: int = 2
    time_col: int = 3
    time_divisor: float = 1.0  # timestamps / divisor = seconds
    header: tuple[str, ...] | None = None  # a first line equal to these names joined by "," is skipped


@dataclass(frozen=True)
class JsonLayout:
    """One JSON object per line: the key of each needed field."""

    user_key: str
    item_key: str
    rating_key: str
    time_key: str
    time_divisor: float = 1.0


@dataclass(frozen=True)
class MetaLayout:
    """One metadata record per line (JSON or Python literal) and where its text fields are."""

    syntax: str  # "json" or "python"
    item_key: str
    title_key: str
    brand_key: str
    categories_key: str
    description_key: str
    main_category_key: str | None = None  # prepended to the categories when present


RATINGS_2014 = CsvLayout(user_col=0, item_col=1)
RATINGS_2018 = CsvLayout(user_col=1, item_col=0)
RATINGS_2023 = CsvLayout(
    user_col=0, item_col=1, time_divisor=1000.0, header=("user_id", "parent_asin", "rating", "timestamp")
)
REVIEWS_2014_2018 = JsonLayout("reviewerID", "asin", "overall", "unixReviewTime")
REVIEWS_2023 = JsonLayout("user_id", "parent_asin", "rating", "timestamp", time_divisor=1000.0)
META_2014 = MetaLayout("python", "asin", "title", "brand", "categories", "description")
META_2018 = MetaLayout("json", "asin", "title", "brand", "category", "description")
META_2023 = MetaLayout(
    "json", "parent_asin", "title", "store", "categories", "description", main_category_key="main_category"
)
