"""What the history adds up to: all-time training totals, `stats()`, `metrics_totals()`, and
the one rule for whether a model's scores are improving or declining.

Totals are exact over every entry ever recorded: the main file's entries are added to the
totals kept for what has been archived, so they never go down when entries move to a year
archive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from backend.ml.history.document import (
    HistoryDocument,
    Record,
    TrainingTotals,
    is_successful,
    model_results,
    models_in,
    number,
    parse_timestamp,
    successful_models,
)

# A score trend is the least-squares line through the last TREND_WINDOW scores, read as the
# change it makes from the first of them to the last; fewer than TREND_MIN_POINTS scores are
# too few to call a direction. A change of TREND_TOLERANCE or more either way is a trend.
TREND_WINDOW = 6
TREND_MIN_POINTS = 4
TREND_TOLERANCE = 0.03

Direction = Literal["improving", "declining", "stable"]


@dataclass(frozen=True)
class Trend:
    """Which way a run of scores goes, and by how much (the fitted change, first to last)."""

    direction: Direction
    change: float


def score_trend(scores: Sequence[float]) -> Trend:
    """The trend of the last TREND_WINDOW scores (oldest first); non-finite ones are left out."""
    window = [float(s) for s in scores if math.isfinite(s)][-TREND_WINDOW:]
    n = len(window)
    if n < TREND_MIN_POINTS:
        return Trend("stable", 0.0)
    mean_x, mean_y = (n - 1) / 2, sum(window) / n
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in enumerate(window))
             / sum((x - mean_x) ** 2 for x in range(n)))
    # Rounded so that scores falling by exactly the tolerance count as falling by it, not by
    # a hair less in floating point.
    change = round(slope * (n - 1), 9)
    if change <= -TREND_TOLERANCE:
        return Trend("declining", change)
    if change >= TREND_TOLERANCE:
        return Trend("improving", change)
    return Trend("stable", change)


# ---- running totals -----------------------------------------------------------------------


def count(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def count_kinds(counts: dict[str, int], alerts: Iterable[Mapping[str, Any]]) -> None:
    for alert in alerts:
        count(counts, str(alert.get("kind") or "unknown"))


def accumulate(totals: TrainingTotals, record: Mapping[str, Any]) -> None:
    """Add one finished training to running totals (a running one is not counted yet)."""
    status = str(record.get("status", "unknown"))
    if status == "running":
        return
    totals.count += 1
    count(totals.by_status, status)
    totals.successful += int(is_successful(record))
    totals.models_trained += int(number(record.get("models_trained")) or 0)
    accuracy = number(record.get("avg_accuracy"))
    if accuracy is not None and successful_models(record) > 0:
        totals.accuracy_sum += accuracy
        totals.accuracy_count += 1
    stamp, last = parse_timestamp(record.get("timestamp")), totals.last_training
    if stamp is not None and (last is None or stamp > (parse_timestamp(last) or stamp)):
        totals.last_training = str(record["timestamp"])
    duration = number(record.get("duration_seconds"))
    if duration is not None and math.isfinite(duration) and duration >= 0:
        count(totals.durations, str(math.ceil(duration)))
        totals.duration_sum += duration
    if record.get("trigger") == "retrain":
        for name in models_in(record):
            count(totals.retrains_by_model, name)


def all_time(doc: HistoryDocument) -> TrainingTotals:
    """The archived training totals plus the main file's finished runs (a copy)."""
    totals = doc.archive.trainings.model_copy(deep=True)
    for entry in doc.trainings:
        accumulate(totals, entry)
    return totals


# ---- what readers get ---------------------------------------------------------------------


def summary(doc: HistoryDocument) -> Record:
    """`History.stats()`: the guide's stats over every run ever recorded, plus `by_status`,
    `running_trainings` and a per-model trend of the latest scores."""
    totals = all_time(doc)
    runs, accuracy_n = totals.count, totals.accuracy_count
    return {
        "total_trainings": runs,
        "successful_trainings": totals.successful,
        "success_rate": round(100.0 * totals.successful / runs, 2) if runs else 0.0,
        "total_models_trained": totals.models_trained,
        "avg_accuracy": round(totals.accuracy_sum / accuracy_n, 4) if accuracy_n else None,
        "last_training": totals.last_training,
        "by_status": dict(totals.by_status),
        "running_trainings": sum(t.get("status") == "running" for t in doc.trainings),
        "per_model": per_model(doc.trainings),
    }


def metrics_totals(doc: HistoryDocument) -> Record:
    """`History.metrics_totals()`: all-time counts for monitoring, archives included."""
    totals = all_time(doc)
    alerts = dict(doc.archive.alerts_by_kind)
    count_kinds(alerts, doc.alerts)
    return {"by_status": dict(totals.by_status),
            "durations": {int(k): n for k, n in totals.durations.items()},
            "duration_sum": totals.duration_sum,
            "retrains_by_model": dict(totals.retrains_by_model), "alerts_by_kind": alerts}


def per_model(trainings: Sequence[Mapping[str, Any]]) -> dict[str, Record]:
    """Per model: its latest scores (oldest to newest, finished runs of the main file) and
    which way they go (`score_trend`)."""
    found: dict[str, Record] = {}
    for entry in reversed(trainings):
        if entry.get("status") == "running":
            continue
        for name, group, result in model_results(entry):
            score = number(result.get("score"))
            if score is None:
                continue
            trend = found.setdefault(name, {"group": group, "metric": result.get("metric"),
                                            "scores": [], "last_timestamp": entry.get("timestamp")})
            if len(trend["scores"]) < TREND_WINDOW:
                trend["scores"].insert(0, score)
    for trend in found.values():
        trend["latest"] = trend["scores"][-1]
        trend["direction"] = score_trend(trend["scores"]).direction
    return dict(sorted(found.items()))
