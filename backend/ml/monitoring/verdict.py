"""What one check found about one model: a typed record, written into the history's check
entry as `as_record()` (the shape every reader of `checks` knows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    """A check's verdict; `degraded_recovering` is above threshold but within the margin
    after a degraded check, so the monitor still holds it degraded (hysteresis)."""

    HEALTHY = "healthy"
    WATCH = "watch"
    DEGRADED = "degraded"
    DEGRADED_RECOVERING = "degraded_recovering"
    INSUFFICIENT_FRESH_DATA = "insufficient_fresh_data"
    # Too few fresh labelled rows, so the score was estimated on the unlabelled ones; below
    # threshold: the estimate's whole interval is under it (a warning, never "degraded").
    ESTIMATED = "estimated"
    ESTIMATED_BELOW_THRESHOLD = "estimated_below_threshold"
    NO_MODEL = "no_model"

    @property
    def standing(self) -> str:
        """What the monitor keeps as its standing verdict for the next check."""
        return Verdict.DEGRADED.value if self is Verdict.DEGRADED_RECOVERING else self.value


@dataclass
class CheckVerdict:
    verdict: Verdict
    version: str | None = None
    threshold: float | None = None
    holdout_score: float | None = None  # the version's own score when it was trained
    samples: int | None = None  # fresh labelled rows scored
    needed: int | None = None  # fresh rows a verdict needs (when there were too few)
    # For a metric that ranks events (ROC AUC): rows of the rarer class found and needed,
    # when there were too few.
    events: int | None = None
    needed_events: int | None = None
    live_score: float | None = None
    # The live score's 90% bootstrap interval (low, high); only when the score was low
    # enough for the drift rule to ask how sure it is.
    live_interval: tuple[float, float] | None = None
    drift: dict[str, Any] | None = None
    ab: dict[str, Any] | None = None
    retrain: dict[str, Any] | None = field(default=None)
    # With too few labelled rows: the score estimated on the pending ones (Estimate.as_dict
    # plus `window`, the first and last pending row's time), or why it was not estimated.
    estimate: dict[str, Any] | None = None
    estimate_note: str | None = None
    # Earlier estimates whose labels have arrived, each with the realized score beside it.
    realized: list[dict[str, Any]] | None = None

    @property
    def scored(self) -> bool:
        return self.live_score is not None

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "version": self.version, "threshold": self.threshold,
            "holdout_score": self.holdout_score, "samples": self.samples,
            "needed": self.needed, "events": self.events, "needed_events": self.needed_events,
            "live_score": self.live_score,
            "live_interval": None if self.live_interval is None else list(self.live_interval),
            "drift": self.drift,
            "verdict": self.verdict.value, "ab": self.ab, "retrain": self.retrain,
            "estimate_note": self.estimate_note, "realized": self.realized or None}
        if self.estimate is not None:  # never under `live_score`: an estimate is no score
            record.update(estimate_fields(self.estimate))
        return {key: value for key, value in record.items() if value is not None}


def estimate_fields(estimate: dict[str, Any]) -> dict[str, Any]:
    """An estimate under the names every view shows it by (`estimated_*`)."""
    return {"estimated_value": estimate["estimated_value"],
            "estimated_low": estimate["estimated_low"],
            "estimated_high": estimate["estimated_high"],
            "estimate_method": estimate["method"], "estimated_rows": estimate["rows"],
            "estimated_window": estimate.get("window")}
