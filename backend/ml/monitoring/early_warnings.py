"""Alerts before a model fails, from one check's verdict: drift that hurts the live score
beyond its noise (`drift_detected`; the rule and why in `backend.ml.training.drift`), and
live scores declining over the last TREND_WINDOW checks (`performance_degradation`, by
`history.stats.score_trend`, the one trend rule), even above the threshold. Each is a
warning, once per cooldown (the alerts' own)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.ml.history.stats import TREND_WINDOW, score_trend
from backend.ml.monitoring.state import ModelMonitorState, ScoreTrail
from backend.ml.monitoring.verdict import CheckVerdict
from backend.ml.training.drift import LiveScore, drift_alert_due

if TYPE_CHECKING:
    from backend.ml.alerts.service import Alerts


def early_warnings(alerts: Alerts, name: str, result: CheckVerdict,
                   model_state: ModelMonitorState) -> None:
    """Alerts before a model fails: drifting inputs, and live scores sliding check after
    check (each a warning, once per cooldown)."""
    if result.live_score is None:
        return
    threshold, live = result.threshold, result.live_score
    drift = result.drift or {}
    # Shifted inputs are every season's normal, and so is a live score under a holdout
    # from another season: only inputs gone where the training rows never went, with a
    # score that fell beyond its noise, are drift (measurements in training/drift.py).
    trained = result.holdout_score
    low, high = result.live_interval or (live, live)
    if drift_alert_due(drift, LiveScore(live, low, high, result.samples or 0), trained):
        novel = drift["novel_features"]
        features = ", ".join(f"{f} (PSI {v:.2f}, {share:.0%} outside)"
                             for f, v, share in novel)
        alerts.notify("warning", "drift_detected",
                      f"{name}'s inputs have moved where its training rows never went "
                      f"({features}) and its live score fell from {trained:.4f} to "
                      f"{live:.4f} (90% interval {low:.4f}-{high:.4f})", model=name,
                      version=result.version, max_psi=drift["max_psi"],
                      top_features=drift.get("top_features"), novel_features=novel,
                      score=trained, live_score=live, live_interval=[low, high],
                      threshold=threshold)
    trail = model_state.trend
    scores = trail.scores if trail is not None and trail.version == result.version else []
    scores = [*scores, live][-TREND_WINDOW:]
    model_state.trend = ScoreTrail(version=str(result.version), scores=scores)
    trend = score_trend(scores)
    drop = -trend.change
    if trend.direction == "declining":
        alerts.notify("warning", "performance_degradation",
                      f"{name}'s live score has been falling for {len(scores)} checks "
                      f"(fitted drop {drop:.3f}, now {scores[-1]:.4f}, threshold "
                      f"{threshold:.2f})", model=name, version=result.version,
                      live_score=scores[-1], threshold=threshold, scores=scores)
