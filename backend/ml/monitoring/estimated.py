"""What the check does while labels are pending: estimate, and later realize, a score.

When a version has fewer than `fresh_minimum` fresh labelled rows but at least as many
fresh rows whose label is not known yet (`fresh.pending_rows`), the check estimates its
score on those (`estimate.py`, from the estimator its verified metadata carries). The
verdict is `estimated` or, when the estimate's whole 95% interval is under the threshold,
`estimated_below_threshold` (one warning alert, `estimated_below_threshold`). Whether that
starts a retrain is ESTIMATE_ACTION's choice, made by the check; here nothing retrains.

Each estimate waits in the monitor's state (`awaiting_labels`) until its labels arrive: a
later check that finds at least REALIZED_SHARE of the estimated rows' window labelled
scores the version on them and records the realized score beside the estimate (in that
check's entry, `realized`, linked by the estimate's check id), with the estimation error.

Deliberately not done: an anomaly detector is never estimated (its ROC AUC has no
calibrated probability to count from; the entry says so in `estimate_note`); an estimate
never becomes a `live_score`, never makes a model `degraded`, and never changes the
monitor's standing verdict, which labels alone decide. An estimate of a version that was
replaced before its labels arrived is dropped, not realized. The realized score is taken
on the window's rows labelled by then, which may include a few already labelled when the
estimate was made.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pandas as pd
from sklearn.pipeline import Pipeline

from backend.ml.alerts.service import Alerts
from backend.ml.data import schema
from backend.ml.fleet.scoring import get_metric
from backend.ml.fleet.specs import ModelSpec
from backend.ml.monitoring import estimate as est
from backend.ml.monitoring.fresh import fresh_minimum
from backend.ml.monitoring.state import EstimateState, ModelMonitorState
from backend.ml.monitoring.verdict import CheckVerdict, Verdict
from backend.ml.training import trainer

logger = logging.getLogger(__name__)
REALIZED_SHARE = 0.9  # of an estimate's rows labelled before its realized score is taken
MAX_AWAITING = 48  # estimates kept waiting for labels per model (two days of hourly checks)


def estimate_pending(spec: ModelSpec, pipeline: Pipeline, meta: Mapping[str, Any],
                     pending: pd.DataFrame, result: CheckVerdict, state: ModelMonitorState,
                     *, check_id: str, at: datetime, alerts: Alerts) -> None:
    """Estimate the score of a check without labels enough (`result`, verdict
    insufficient_fresh_data) on the `pending` rows; `result` and `state` record it."""
    state.estimate = None
    try:
        est.check_supported(spec)
    except est.EstimationError as exc:
        result.estimate_note = str(exc)
        return
    needed = fresh_minimum(spec)
    if len(pending) < needed:
        result.estimate_note = (f"{len(pending)} fresh rows await labels; an estimate "
                                f"needs {needed}")
        return
    try:
        estimator = est.restore(spec, meta.get("performance_estimator"), pipeline)
        found = est.estimate(estimator, pipeline, pending)
    except est.EstimationError as exc:
        result.estimate_note = str(exc)
        return
    tcol = schema.time_column(spec.table)
    window = (pending[tcol].min().isoformat(), pending[tcol].max().isoformat())
    threshold = float(result.threshold or 0.0)
    below = found.estimated_high < threshold
    result.verdict = Verdict.ESTIMATED_BELOW_THRESHOLD if below else Verdict.ESTIMATED
    result.estimate = {**found.as_dict(), "window": list(window)}
    state.estimate = EstimateState(
        check_id=check_id, timestamp=at, version=str(result.version), metric=found.metric,
        estimated_value=round(found.estimated_value, 6),
        estimated_low=round(found.estimated_low, 6),
        estimated_high=round(found.estimated_high, 6), estimated_rows=found.rows,
        method=found.method, window=window, below_threshold=below)
    state.awaiting_labels = [*state.awaiting_labels, state.estimate][-MAX_AWAITING:]
    if below:
        alerts.notify("warning", "estimated_below_threshold",
                      f"{spec.name}'s {result.version} is estimated below its threshold "
                      f"{threshold:.2f} on {found.rows} rows whose labels are pending: "
                      f"estimated {found.estimated_value:.4f} (95% interval "
                      f"{found.estimated_low:.4f}-{found.estimated_high:.4f}, "
                      f"{found.method}); labels will confirm or not", model=spec.name,
                      version=result.version, threshold=threshold,
                      estimated_value=found.estimated_value,
                      estimated_low=found.estimated_low, estimated_high=found.estimated_high)


def realize(spec: ModelSpec, pipeline: Pipeline, fresh: pd.DataFrame, version: str,
            state: ModelMonitorState) -> list[dict[str, Any]]:
    """The waiting estimates of `version` whose rows are labelled now (`fresh`: the
    version's fresh labelled rows), each with its realized score; `state` keeps the rest."""
    tcol = schema.time_column(spec.table)
    realized, waiting = [], []
    for estimate in state.awaiting_labels:
        if estimate.version != version:
            continue  # the version was replaced before its labels arrived
        start, end = (pd.Timestamp(t) for t in estimate.window)
        rows = fresh[(fresh[tcol] >= start) & (fresh[tcol] <= end)]
        if len(rows) < max(2, REALIZED_SHARE * estimate.estimated_rows):
            waiting.append(estimate)
            continue
        try:
            score = get_metric(spec.metric).score(
                trainer.target_values(spec, rows[spec.target]),
                trainer.decision_values(spec, pipeline, rows[list(spec.features)]))
        except Exception as exc:  # one window that cannot be scored must not stop the check
            logger.warning("%s: the estimate of %s cannot be realized: %s", spec.name,
                           estimate.check_id, exc)
            continue
        realized.append(realized_record(estimate, round(float(score), 6), len(rows)))
    state.awaiting_labels = waiting
    return realized


def realized_record(estimate: EstimateState, score: float, rows: int) -> dict[str, Any]:
    return {"estimate_check_id": estimate.check_id,
            "estimated_at": estimate.timestamp.isoformat(), "version": estimate.version,
            "estimated_value": estimate.estimated_value,
            "estimated_low": estimate.estimated_low, "estimated_high": estimate.estimated_high,
            "estimate_method": estimate.method, "realized_value": score,
            "estimation_error": round(estimate.estimated_value - score, 6),
            "inside_interval": estimate.estimated_low <= score <= estimate.estimated_high,
            "realized_rows": rows, "window": list(estimate.window)}
