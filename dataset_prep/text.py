"""Item text cleaning: HTML out, one line, single spaces, no characters that break a TSV row.

RecBole reads atomic files with ``pandas.read_csv(sep="\\t", engine="python")`` and default quoting, so
a cell must hold no tab, no line break of any kind, and must not start a quoted field: double quotes
are written as single quotes.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

# A tag (or an unterminated tag at the end, e.g. '<span class="a-size-medium'); '<' must be followed by a
# letter, '/' or '!' so that "a < b" survives.
_TAG = re.compile(r"<[A-Za-z/!][^<>]*(?:>|$)")
# Every whitespace (tabs, CR, LF, U+2028, ...) and every control character.
_SPACE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
# Anything clean_text would change: entity, tag, quote, control, whitespace other than single inner spaces.
_NEEDS_CLEANING = re.compile(r'[&<"\x00-\x1f\x7f-\x9f]|[^\S ]|  |^ | $')
_BAD_TOKEN = re.compile(r'[\s"\x00-\x1f\x7f-\x9f]')
CATEGORY_SEPARATOR = ", "


def clean_text(value: object, max_len: int | None = None) -> str:
    """One line of readable text from a metadata value (string or list of strings), "" if none."""
    if isinstance(value, list | tuple):
        value = " ".join(clean_text(v) for v in value if isinstance(v, str | list | tuple))
    elif not isinstance(value, str):
        return ""
    text = value
    if _NEEDS_CLEANING.search(text):
        text = html.unescape(text) if "&" in text else text
        if "<" in text:
            text = _TAG.sub(" ", text)
        text = _SPACE.sub(" ", text.replace('"', "'")).strip()
    if max_len is not None and len(text) > max_len:
        cut = text.rfind(" ", 0, max_len + 1)
        text = text[: cut if cut > max_len // 2 else max_len].rstrip()
    return text


def join_categories(values: Iterable[object]) -> str:
    """Flatten category paths (a list, or the 2014 list of lists), drop repeats, join with ", "."""
    seen: dict[str, None] = {}
    for value in values:
        for name in value if isinstance(value, list | tuple) else [value]:
            cleaned = clean_text(name)
            if cleaned:
                seen.setdefault(cleaned, None)
    return CATEGORY_SEPARATOR.join(seen)


def is_valid_token(value: str) -> bool:
    """True when ``value`` can be a RecBole token: non-empty, no whitespace, quote or control character."""
    return bool(value) and _BAD_TOKEN.search(value) is None
