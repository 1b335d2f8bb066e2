"""Every category of the 2014, 2018 and 2023 Amazon releases: file names, URLs and record layouts.

Interaction sources: 2014 ``ratings`` (the ratings CSV), ``5core`` and ``reviews`` (the full review file);
2018 ``ratings``, ``5core`` and ``reviews``; 2023 ``reviews`` (the raw review file) and the rating-only
benchmark CSVs ``ratings`` (0-core: every rating, repeats removed) and ``5core``. A file keeps its published
name on disk, except where two sources publish the same name (the 2023 benchmark's
``0core/rating_only/<Cat>.csv.gz`` and ``5core/rating_only/<Cat>.csv.gz``): those are saved and looked for as
``<Cat>.0core.csv.gz`` and ``<Cat>.5core.csv.gz``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import PurePosixPath

from dataset_prep import formats
from dataset_prep.errors import PrepError

CATEGORIES_2014 = (
    "Books", "Electronics", "Movies_and_TV", "CDs_and_Vinyl", "Clothing_Shoes_and_Jewelry",
    "Home_and_Kitchen", "Kindle_Store", "Sports_and_Outdoors", "Cell_Phones_and_Accessories",
    "Health_and_Personal_Care", "Toys_and_Games", "Video_Games", "Tools_and_Home_Improvement", "Beauty",
    "Apps_for_Android", "Office_Products", "Pet_Supplies", "Automotive", "Grocery_and_Gourmet_Food",
    "Patio_Lawn_and_Garden", "Baby", "Digital_Music", "Musical_Instruments", "Amazon_Instant_Video",
)  # fmt: skip
CATEGORIES_2018 = (
    "AMAZON_FASHION", "All_Beauty", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Books",
    "CDs_and_Vinyl", "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music",
    "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food", "Home_and_Kitchen", "Industrial_and_Scientific",
    "Kindle_Store", "Luxury_Beauty", "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments",
    "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Prime_Pantry", "Software",
    "Sports_and_Outdoors", "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games",
)  # fmt: skip
CATEGORIES_2023 = (
    "All_Beauty", "Amazon_Fashion", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Baby_Products",
    "Beauty_and_Personal_Care", "Books", "CDs_and_Vinyl", "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food",
    "Handmade_Products", "Health_and_Household", "Health_and_Personal_Care", "Home_and_Kitchen",
    "Industrial_and_Scientific", "Kindle_Store", "Magazine_Subscriptions", "Movies_and_TV",
    "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Software",
    "Sports_and_Outdoors", "Subscription_Boxes", "Tools_and_Home_Improvement", "Toys_and_Games",
    "Video_Games", "Unknown",
)  # fmt: skip


@dataclass(frozen=True)
class Source:
    """One kind of interaction file of a release: its path template, record layout and name on disk."""

    path: str  # relative to the release base URL; "{cat}" is the category
    layout: formats.CsvLayout | formats.JsonLayout
    local: str | None = None  # the file's name on disk, when not the published one ("{cat}" as in path)

    def file(self, category: str) -> str:
        """The file's name on disk (as ``download`` saves it and ``convert`` looks for it)."""
        return (self.local or file_name(self.path)).format(cat=category)


@dataclass(frozen=True)
class Release:
    """A release: base URL, categories, interaction sources and the metadata file."""

    name: str
    base_url: str
    categories: tuple[str, ...]
    sources: dict[str, Source]
    default_source: str
    meta_path: str
    meta_layout: formats.MetaLayout


# Interaction and metadata paths are relative to the release's base URL; "{cat}" is the category.
# fmt: off
_RELEASE_ROWS: tuple[tuple[str, str, tuple[str, ...], str, formats.MetaLayout], ...] = (
    # release, base URL, categories, metadata path, metadata layout
    ("2014", "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/", CATEGORIES_2014,
     "meta_{cat}.json.gz", formats.META_2014),
    ("2018", "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/", CATEGORIES_2018,
     "metaFiles2/meta_{cat}.json.gz", formats.META_2018),
    ("2023", "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/", CATEGORIES_2023,
     "raw/meta_categories/meta_{cat}.jsonl.gz", formats.META_2023),
)
_SOURCE_ROWS: tuple[tuple[str, str, str, formats.CsvLayout | formats.JsonLayout, str | None], ...] = (
    # release, source (a release's first is its default), path, layout, name on disk (None: the published one)
    ("2014", "ratings", "ratings_{cat}.csv", formats.RATINGS_2014, None),
    ("2014", "5core", "reviews_{cat}_5.json.gz", formats.REVIEWS_2014_2018, None),
    ("2014", "reviews", "reviews_{cat}.json.gz", formats.REVIEWS_2014_2018, None),
    ("2018", "ratings", "categoryFilesSmall/{cat}.csv", formats.RATINGS_2018, None),
    ("2018", "5core", "categoryFilesSmall/{cat}_5.json.gz", formats.REVIEWS_2014_2018, None),
    ("2018", "reviews", "categoryFiles/{cat}.json.gz", formats.REVIEWS_2014_2018, None),
    ("2023", "reviews", "raw/review_categories/{cat}.jsonl.gz", formats.REVIEWS_2023, None),
    ("2023", "ratings", "benchmark/0core/rating_only/{cat}.csv.gz", formats.RATINGS_2023,
     "{cat}.0core.csv.gz"),
    ("2023", "5core", "benchmark/5core/rating_only/{cat}.csv.gz", formats.RATINGS_2023,
     "{cat}.5core.csv.gz"),
)
# fmt: on


def _release(
    name: str, base_url: str, categories: tuple[str, ...], meta_path: str, meta_layout: formats.MetaLayout
) -> Release:
    """The release of a ``_RELEASE_ROWS`` row, with its ``_SOURCE_ROWS`` (the first is the default)."""
    sources = {
        src: Source(path, layout, local) for rel, src, path, layout, local in _SOURCE_ROWS if rel == name
    }
    return Release(name, base_url, categories, sources, next(iter(sources)), meta_path, meta_layout)


RELEASES: dict[str, Release] = {row[0]: _release(*row) for row in _RELEASE_ROWS}


@dataclass(frozen=True)
class Entry:
    """One (release, category, source) to download or convert."""

    release: Release
    category: str
    source: str

    @property
    def interactions_path(self) -> str:
        """Path of the interaction file relative to the release base URL."""
        return self.release.sources[self.source].path.format(cat=self.category)

    @property
    def interactions_file(self) -> str:
        """Name of the interaction file on disk."""
        return self.release.sources[self.source].file(self.category)

    @property
    def meta_path(self) -> str:
        """Path of the metadata file relative to the release base URL."""
        return self.release.meta_path.format(cat=self.category)

    @property
    def meta_file(self) -> str:
        """Name of the metadata file on disk (its published name)."""
        return file_name(self.meta_path)

    @property
    def layout(self) -> formats.CsvLayout | formats.JsonLayout:
        """Record layout of the interaction file."""
        return self.release.sources[self.source].layout

    @property
    def label(self) -> str:
        """``release:category:source``, as accepted by ``--category``."""
        return f"{self.release.name}:{self.category}:{self.source}"


def file_name(relative_path: str) -> str:
    """The published file name (last path component)."""
    return PurePosixPath(relative_path).name


def resolve_category(release: Release, name: str) -> str:
    """The exact category name, accepting any letter case; unknown names get the closest suggestion."""
    if name in release.categories:
        return name
    by_lower = {c.lower(): c for c in release.categories}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.4)
    hint = f"; did you mean {by_lower[close[0]]!r}?" if close else ""
    raise PrepError(
        f"release {release.name} has no category {name!r}{hint} (`srt-prep list --release {release.name}`)"
    )


def parse_entry(spec: str, default_release: str | None, default_source: str | None) -> Entry:
    """Parse ``CATEGORY``, ``RELEASE:CATEGORY`` or ``RELEASE:CATEGORY:SOURCE``."""
    parts = spec.strip().split(":")
    if len(parts) == 1:
        if default_release is None:
            raise PrepError(f"category {spec!r} needs a release: pass --release or write RELEASE:{spec}")
        parts.insert(0, default_release)
    if len(parts) not in (2, 3):
        raise PrepError(
            f"cannot read {spec!r}: expected CATEGORY, RELEASE:CATEGORY or RELEASE:CATEGORY:SOURCE"
        )
    release_name, category, source = parts if len(parts) == 3 else [*parts, default_source]
    release = RELEASES.get(release_name)
    if release is None:
        raise PrepError(f"unknown release {release_name!r}; choose one of {', '.join(RELEASES)}")
    source = source or release.default_source
    if source not in release.sources:
        raise PrepError(
            f"release {release.name} publishes no {source!r} files; "
            f"choose one of {', '.join(release.sources)}"
        )
    return Entry(release, resolve_category(release, category), source)


def table(release_names: list[str] | None = None, urls: bool = False) -> str:
    """All categories as a plain-text table (one row per release and category): each source with its file
    name on disk, and the metadata file; full URLs instead with ``urls``."""
    header = ["release", "category", "sources (file)" if not urls else "sources (URL)", "metadata"]
    rows = []
    for release in RELEASES.values():
        if release_names and release.name not in release_names:
            continue
        for cat in release.categories:
            sources = ", ".join(
                f"{name} ({release.base_url + src.path.format(cat=cat) if urls else src.file(cat)})"
                for name, src in release.sources.items()
            )
            meta = release.meta_path.format(cat=cat)
            rows.append([release.name, cat, sources, release.base_url + meta if urls else file_name(meta)])
    widths = [max(map(len, column)) for column in zip(header, *rows, strict=True)]
    rows = [header, ["-" * w for w in widths], *rows]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if urls:
        lines.append("")
        lines += [f"{r.name} base URL: {r.base_url}" for r in RELEASES.values()]
    return "\n".join(lines)
