"""Daily instants in the training time zone, as UTC: when the daily run falls due.

Shared by the scheduler (when to fire, whether a run was missed) and the monitor (how long a
model cools down). Instants are compared in UTC: aware times sharing a tzinfo compare by
wall clock, which a DST change makes ambiguous.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


def _at(day: date, at: str, tz: ZoneInfo) -> datetime:
    """`at` on `day` in `tz` as a UTC instant. A wall time that a DST change skips maps
    forward (02:30 on a spring-forward night is 03:30), a repeated one to its first pass."""
    hour, minute = (int(p) for p in at.split(":"))
    return datetime.combine(day, time(hour, minute), tzinfo=tz).astimezone(UTC)


def previous_daily_time(now: datetime, at: str, tz: ZoneInfo) -> datetime:
    """The latest scheduled daily instant at or before `now` (UTC)."""
    day = now.astimezone(tz).date() + timedelta(days=1)
    while (candidate := _at(day, at, tz)) > now:
        day -= timedelta(days=1)
    return candidate


def next_daily_time(now: datetime, at: str, tz: ZoneInfo) -> datetime:
    """The next scheduled daily instant strictly after `now` (UTC)."""
    day = now.astimezone(tz).date() - timedelta(days=1)
    while (candidate := _at(day, at, tz)) <= now:
        day += timedelta(days=1)
    return candidate
