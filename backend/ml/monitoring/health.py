"""A model's health: THE one function every view calls (API `state`, dashboard badge,
`/metrics`, CLI `models`). Nothing else decides what state a model is in.

States, first match wins:

    no_version       nothing was ever promoted
    retraining       a retrain after a degraded check is running and includes it
    training         a routine run (daily, manual, catch-up) is running and includes it
    cooling_down     retrains were exhausted; no retrain until new data or the next daily run
    degraded         the monitor's standing verdict on the serving version: below threshold
                     by more than the margin, or twice in a row
    watch            the serving version's newest check was below threshold once, by less
                     than the margin: to be confirmed at the next check
    estimated_below_threshold
                     too few labels for a verdict, and the newest check's estimate on rows
                     whose labels are pending lies, interval and all, under the threshold:
                     a warning until labels confirm it (never `degraded`, which labels
                     alone decide; ESTIMATE_ACTION says whether it retrains)
    below_threshold  the serving version's own holdout score is under its threshold (a
                     first version that serves because there is nothing better)
    healthy          none of the above

A model under its threshold is never healthy. A verdict about a version that no longer
serves says nothing about the one that replaced it, so it is ignored: a check that found
a model degraded and recovered it by promoting a good version leaves it healthy.

The inputs are read once per fleet: the registry and version metadata, the monitor's
state, the running run (`runs.progress.current_run`) and the thresholds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.ml.fleet import specs
from backend.ml.monitoring.state import (
    EstimateState,
    ModelMonitorState,
    MonitorState,
    read_state,
)
from backend.ml.registry.store import StoreError
from backend.ml.statefile import Recovery

if TYPE_CHECKING:
    from backend.ml.config import Settings
    from backend.ml.history import History
    from backend.ml.registry.store import ModelStore


class Health(StrEnum):
    NO_VERSION = "no_version"
    RETRAINING = "retraining"
    TRAINING = "training"
    COOLING_DOWN = "cooling_down"
    DEGRADED = "degraded"
    WATCH = "watch"
    ESTIMATED_BELOW_THRESHOLD = "estimated_below_threshold"
    BELOW_THRESHOLD = "below_threshold"
    HEALTHY = "healthy"


# Needs a person's or the loop's attention: what `ml_model_degraded` counts.
DEGRADED_STATES = frozenset({Health.RETRAINING, Health.COOLING_DOWN, Health.DEGRADED})


@dataclass(frozen=True)
class RunningRun:
    """What health needs of the run now holding the training lock."""

    trigger: str
    models: frozenset[str]


@dataclass(frozen=True)
class ModelHealth:
    state: Health
    reason: str

    @property
    def degraded(self) -> bool:
        return self.state in DEGRADED_STATES


def model_health(*, name: str, production: Mapping[str, Any] | None, threshold: float,
                 monitor: ModelMonitorState, run: RunningRun | None,
                 now: datetime | None = None) -> ModelHealth:
    """The state of model `name` (see the module docstring for the precedence)."""
    now = now or datetime.now(UTC)
    version = production.get("version") if production is not None else None
    if version is None:
        return ModelHealth(Health.NO_VERSION, "nothing promoted yet")
    if run is not None and name in run.models:
        if run.trigger == "retrain":
            return ModelHealth(Health.RETRAINING, "a retrain after a degraded check is running")
        return ModelHealth(Health.TRAINING, f"in the running {run.trigger} run")
    until = monitor.cooling_until(now)
    if until is not None:
        return ModelHealth(Health.COOLING_DOWN, "retrains exhausted; waiting for new data "
                                                f"or {until.isoformat()}")
    about_serving = monitor.version in (None, version)
    if about_serving and monitor.verdict == "degraded":
        return ModelHealth(Health.DEGRADED, f"the newest checks of {version} are below "
                                            f"its threshold {threshold:.2f}")
    if about_serving and monitor.verdict == "watch":
        return ModelHealth(Health.WATCH, f"the newest check of {version} was below its "
                                         f"threshold {threshold:.2f} once")
    estimate = monitor.estimate
    if estimate is not None and estimate.version == version and estimate.below_threshold:
        return ModelHealth(Health.ESTIMATED_BELOW_THRESHOLD, (
            f"{version} is estimated below its threshold {threshold:.2f} on "
            f"{estimate.estimated_rows} rows whose labels are pending: estimated "
            f"{estimate.estimated_value:.4f} (95% interval {estimate.estimated_low:.4f}-"
            f"{estimate.estimated_high:.4f}); labels will confirm or not"))
    score = production.get("score") if production is not None else None
    if not isinstance(score, int | float) or score < threshold:
        shown = f"{score:.4f}" if isinstance(score, int | float) else "unknown"
        return ModelHealth(Health.BELOW_THRESHOLD, f"{version} scored {shown} on its "
                                                   f"holdout, under {threshold:.2f}")
    return ModelHealth(Health.HEALTHY, f"{version} scored {score:.4f}, threshold "
                                       f"{threshold:.2f}")


@dataclass(frozen=True)
class ModelStatus:
    """One model as every view shows it: what serves, its threshold, and its health."""

    name: str
    group: str
    metric: str
    task: str
    threshold: float
    production: Mapping[str, Any] | None
    error: str | None  # why the production metadata is unreadable
    monitor: ModelMonitorState
    health: ModelHealth

    @property
    def estimate(self) -> EstimateState | None:
        """The newest check's estimate, when it is about the version serving now."""
        version = (self.production or {}).get("version")
        found = self.monitor.estimate
        return found if found is not None and found.version == version else None

    def estimated_fields(self) -> dict[str, Any]:
        """`estimate` under the names every view shows it by (all None without one)."""
        found = self.estimate
        if found is None:
            return dict.fromkeys(("estimated_value", "estimated_low", "estimated_high",
                                  "estimate_method", "estimated_rows"))
        return {"estimated_value": found.estimated_value, "estimated_low": found.estimated_low,
                "estimated_high": found.estimated_high, "estimate_method": found.method,
                "estimated_rows": found.estimated_rows}


def running_run(logs_dir: Path, *,
                on_recover: Callable[[Recovery], None] | None = None) -> RunningRun | None:
    """The run holding the training lock now (any process), as health needs it."""
    from backend.ml.runs.progress import current_run

    progress = current_run(logs_dir, on_recover=on_recover)
    if progress is None:
        return None
    return RunningRun(progress.trigger, frozenset(progress.models))


def fleet_status(store: ModelStore, settings: Settings, *, monitor: MonitorState,
                 run: RunningRun | None, now: datetime | None = None) -> list[ModelStatus]:
    """Every model's status, in name order, from inputs read once for the whole fleet."""
    now = now or datetime.now(UTC)
    rows = []
    for name in specs.MODEL_NAMES:
        spec = specs.get_spec(name)
        threshold = settings.threshold_for(spec)
        production, error = None, None
        try:
            production = store.production_meta(name)
        except StoreError as exc:  # one unreadable model must not hide the other 16
            error = str(exc)
        entry = monitor.of(name)
        health = (ModelHealth(Health.DEGRADED, f"production cannot be read: {error}")
                  if error is not None else
                  model_health(name=name, production=production, threshold=threshold,
                               monitor=entry, run=run, now=now))
        rows.append(ModelStatus(name, spec.group, spec.metric, spec.task, threshold,
                                production, error, entry, health))
    return rows


def read_fleet(store: ModelStore, settings: Settings, *,
               on_recover: Callable[[Recovery], None] | None = None,
               now: datetime | None = None) -> list[ModelStatus]:
    """`fleet_status` with its inputs read now from the state on disk (any process)."""
    return fleet_status(store, settings,
                        monitor=read_state(settings.LOGS_DIR, on_recover=on_recover),
                        run=running_run(settings.LOGS_DIR, on_recover=on_recover), now=now)


def newest_check(history: History, name: str) -> dict[str, Any] | None:
    """This model's entry in the newest check that scored it, with the check's id and time."""
    for check in history.checks(limit=1, model=name):
        entry = (check.get("models") or {}).get(name)
        if isinstance(entry, dict):
            return {**entry, "check_id": check.get("check_id"),
                    "timestamp": check.get("timestamp")}
    return None
