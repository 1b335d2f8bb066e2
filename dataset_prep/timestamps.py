"""Timestamp units and plausibility, checked file by file.

Each release documents its unit (2014/2018 seconds, 2023 milliseconds: ``layout.time_divisor``). A
value is plausible when, read in its unit, it lies between 1994-01-01 (before Amazon sold anything) and
one day after now. ``--timestamp-unit`` chooses how values are read:

- ``release`` (default): every file in its release's unit;
- ``s`` / ``ms``: every file in that unit (a mirror that re-encoded the times);
- ``auto``: each value in the unit its size implies (>= 1e11 is milliseconds: 1e11 s is the year 5138,
  1e11 ms is 1973), for a file that mixes both.

A file with implausible values stops the conversion: the message names the file, counts the values, shows
an example and says which option fits (a whole file in the other unit, a file mixing units, or values that
are no time at all: negative, before 1994, far future). ``--odd-timestamps drop`` drops those rows
instead, counted as ``odd_timestamp``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from dataset_prep.errors import PrepError

UNITS = ("release", "s", "ms", "auto")
ODD_POLICIES = ("stop", "drop")
EARLIEST = 757382400.0  # 1994-01-01T00:00:00Z
AUTO_MS_FROM = 1e11
DIVISOR = {"s": 1.0, "ms": 1000.0}
UNIT_WORD = {"s": "seconds", "ms": "milliseconds"}
OTHER_UNIT = {"s": "ms", "ms": "s"}
KINDS = ("plausible", "other_unit", "implausible")


def unit_of(divisor: float) -> str:
    """``"s"`` or ``"ms"`` for a layout's ``time_divisor``."""
    return "ms" if divisor == 1000.0 else "s"


@dataclass
class TimeCheck:
    """Reads one file's raw timestamps as seconds and counts what does not look like a review time."""

    path: str
    release: str
    release_unit: str  # "s" or "ms"
    unit: str = "release"  # one of UNITS
    latest: float = field(default_factory=lambda: time.time() + 86400.0)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, float] = field(default_factory=dict)  # kind -> first raw value of that kind

    @property
    def read_unit(self) -> str:
        """The unit values are read in (``auto`` for per-value)."""
        return self.release_unit if self.unit == "release" else self.unit

    def seconds(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``raw`` in seconds and the mask of plausible values; counts each kind."""
        unit = self.read_unit
        seconds = np.where(raw >= AUTO_MS_FROM, raw / 1000.0, raw) if unit == "auto" else raw / DIVISOR[unit]
        ok = self._plausible(seconds)
        other = np.zeros(len(raw), bool)
        if unit != "auto":
            other = ~ok & self._plausible(raw / DIVISOR[OTHER_UNIT[unit]])
        for kind, mask in zip(KINDS, (ok, other, ~ok & ~other), strict=True):
            count = int(mask.sum())
            self.counts[kind] += count
            if count and kind not in self.examples:
                self.examples[kind] = float(raw[np.argmax(mask)])
        return seconds, ok

    def _plausible(self, seconds: np.ndarray) -> np.ndarray:
        return (seconds >= EARLIEST) & (seconds <= self.latest)

    @property
    def odd(self) -> int:
        """Values that are not plausible in the chosen unit."""
        return self.counts["other_unit"] + self.counts["implausible"]

    def stop(self) -> None:
        """Raise :class:`PrepError` saying what is wrong with the file's timestamps and the option that fits,
        if anything is."""
        if not self.odd:
            return
        unit = self.read_unit
        parts = []
        other, good = self.counts["other_unit"], self.counts["plausible"]
        if other:
            other_unit = OTHER_UNIT[unit]
            value = self.examples["other_unit"]
            if good:
                parts.append(
                    f"timestamps mix seconds and milliseconds ({good:,} are {UNIT_WORD[unit]}, e.g. "
                    f"{_show(self.examples['plausible'])}; {other:,} are {UNIT_WORD[other_unit]}, e.g. "
                    f"{_show(value)}), which would reorder users' sequences: pass --timestamp-unit auto "
                    "to read each value in the unit its size implies"
                )
            else:
                reading = (
                    f"release {self.release} publishes {UNIT_WORD[unit]}"
                    if self.unit == "release"
                    else f"--timestamp-unit {unit} reads {UNIT_WORD[unit]}"
                )
                parts.append(
                    f"timestamps are in {UNIT_WORD[other_unit]}, but {reading} (e.g. {_show(value)} is "
                    f"{iso_date(value / DIVISOR[other_unit])} in {UNIT_WORD[other_unit]}, "
                    f"{iso_date(value / DIVISOR[unit])} in {UNIT_WORD[unit]}): if the file is right, pass "
                    f"--timestamp-unit {other_unit}"
                )
        if self.counts["implausible"]:
            parts.append(f"{self._implausible()}: pass --odd-timestamps drop to drop those rows")
        raise PrepError("; ".join(parts), self.path)

    def _implausible(self) -> str:
        total = sum(self.counts.values())
        return (
            f"{self.counts['implausible']:,} of {total:,} timestamps are no time between 1994 and "
            f"{iso_date(self.latest)} in {UNIT_WORD.get(self.read_unit, 'either unit')} (e.g. "
            f"{_show(self.examples['implausible'])})"
        )

    def dropped_note(self) -> str:
        """The warning for ``--odd-timestamps drop``."""
        kinds = [self._implausible()] if self.counts["implausible"] else []
        if self.counts["other_unit"]:
            example = _show(self.examples["other_unit"])
            kinds.append(f"{self.counts['other_unit']:,} are in the other unit (e.g. {example})")
        return f"dropped {self.odd:,} rows with odd timestamps: {'; '.join(kinds)}"

    def record(self, dropped: int) -> dict:
        """The report entry: unit read, counts by kind, rows dropped."""
        return {"unit": self.read_unit, **self.counts, "dropped": dropped}


def _show(value: float) -> str:
    return str(int(value)) if abs(value) < 1e16 and value == int(value) else f"{value:g}"


def iso_date(seconds: float, time_of_day: bool = False) -> str:
    """A time as an ISO date (with ``time_of_day``, the time too when not midnight), or the side of the
    calendar it falls off."""
    try:
        moment = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return "beyond the year 9999" if seconds > 0 else "before the year 1"
    midnight = moment.time() == datetime.min.time()
    return moment.strftime("%Y-%m-%d" if midnight or not time_of_day else "%Y-%m-%dT%H:%M:%S")
