"""The training history: runs, checks, model versions and alerts, bounded by year archives.

This package's public API; its modules are `document` (the file's shape and record helpers),
`stats` (totals and score trends), `archive` (the year files), `recovery` (what a lost main
file is rebuilt from) and `journal` (`History`).
"""

from __future__ import annotations

from backend.ml.history.document import (
    DEFAULT_LIMITS,
    STATUSES,
    TRIGGERS,
    HistoryPermissionError,
    HistoryWriteError,
    models_in,
    parse_timestamp,
    utc_now_iso,
)
from backend.ml.history.journal import History
from backend.ml.history.recovery import MissingFileRecovery
from backend.ml.history.stats import (
    TREND_MIN_POINTS,
    TREND_TOLERANCE,
    TREND_WINDOW,
    Trend,
    score_trend,
)

__all__ = [
    "DEFAULT_LIMITS",
    "STATUSES",
    "TREND_MIN_POINTS",
    "TREND_TOLERANCE",
    "TREND_WINDOW",
    "TRIGGERS",
    "History",
    "HistoryPermissionError",
    "HistoryWriteError",
    "MissingFileRecovery",
    "Trend",
    "models_in",
    "parse_timestamp",
    "score_trend",
    "utc_now_iso",
]
