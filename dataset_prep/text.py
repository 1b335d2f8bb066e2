"""Item text cleaning: HTML out, one line, single spaces, no characters that break a TSV row, no invisible
characters.

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
# Invisible characters, removed: zero-width space, word joiner, BOM / zero-width no-break space, Mongolian
# vowel separator, soft hyphen, and the bidirectional controls (marks, embeddings, overrides such as U+202E,
# isolates), which can make a title display reversed. ZWJ and ZWNJ (U+200C, U+200D) stay: they shape
# Indic and Persian words and emoji.
_INVISIBLE = "\xad\u061c\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
_HIDDEN = re.compile(f"[{_INVISIBLE}]+")
# A character clean_text would change: entity/tag start, quote, control, or whitespace other than " "
# (Python's str.isspace set, spelled out so that one character class does the test).
_DIRTY_CHAR = re.compile(
    f'[&<"\x00-\x1f\x7f-\x9f\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000{_INVISIBLE}]'
)
# What a RecBole token cannot hold: every whitespace character (str.isspace), every control character, and
# '"'. The converter tests ids against this set in the engine (dataset_prep.table).
TOKEN_BREAKERS = '"' + "".join(map(chr, [
    *range(0x21), *range(0x7F, 0xA1), 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
]))  # fmt: skip
CATEGORY_SEPARATOR = ", "


def clean_text(value: object, max_len: int | None = None) -> str:
    """One line of readable text from a metadata value (string or list of strings), "" if none."""
    if isinstance(value, list | tuple):  # joined raw, cleaned once (empty parts collapse with the spaces)
        value = " ".join(
            v if isinstance(v, str) else clean_text(v) for v in value if isinstance(v, str | list | tuple)
        )
    elif not isinstance(value, str):
        return ""
    text = value
    if _DIRTY_CHAR.search(text) or "  " in text or text.startswith(" ") or text.endswith(" "):
        text = html.unescape(text) if "&" in text else text
        if "<" in text:
            text = _TAG.sub(" ", text)
        text = _HIDDEN.sub("", text)
        text = _SPACE.sub(" ", text.replace('"', "'")).strip()
    if max_len is not None and len(text) > max_len:
        cut = text.rfind(" ", 0, max_len + 1)
        text = text[: cut if cut > max_len // 2 else max_len].rstrip()
    return text


def join_categories(values: Iterable[object]) -> str:
    """Flatten category paths (a list, or the 2014 list of lists), drop repeats, join with ", "."""
    names = (name for value in values for name in (value if isinstance(value, list | tuple) else [value]))
    cleaned = (clean_text(name) for name in names)
    return CATEGORY_SEPARATOR.join(dict.fromkeys(text for text in cleaned if text))  # first-seen order


def join_text(values: Iterable[str]) -> str:
    """An item's text from its text fields: the non-empty values, stripped, joined by ``". "`` (how SRT
    reads a catalog, :mod:`recbole_srt.catalog`, and how ``srt-prep merge`` writes a corpus)."""
    return ". ".join(value.strip() for value in values if value.strip())
