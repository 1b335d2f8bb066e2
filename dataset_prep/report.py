"""The conversion report: counts by reason and warnings (also printed to stderr)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

DROP_REASONS = (
    "malformed_line",
    "truncated_stream",
    "odd_timestamp",
    "time_range",
    "rating_threshold",
    "missing_metadata",
    "missing_text",
    "excluded_user",
    "duplicate",
    "k_core",
)


@dataclass
class Report:
    """Rows dropped by reason (in the order the filters run) and human-readable warnings."""

    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Record a warning and print it to stderr."""
        self.warnings.append(message)
        print(f"srt-prep: warning: {message}", file=sys.stderr)
