"""Prometheus metrics of the fleet, derived from the state on disk at every scrape.

The service runs as several uvicorn workers and trains in child processes, so counters
kept in one process's memory would disagree between workers and reset on restart. Every
number here is read, when scraped, from what all processes share: the model registry and
version metadata (JSON), the training history (with its archived totals, so counters do
not go down when old entries are archived), the monitor's state, the alert cooldown (its
count of suppressed alerts) and the training lock.
Any worker answers the same numbers, except `ml_scheduler_lease_held` and the `ml_shadow_*`
families (shadow scoring of candidates, counted in memory), which are about the process
answering.

Deliberately not done: no model is unpickled and the database is never opened, so a
scrape stays cheap however often it comes.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from backend.app.deps import Scheduler
from backend.app.shadow import ShadowScorer
from backend.ml.alerts.service import suppressed_counts
from backend.ml.config import Settings
from backend.ml.fleet import specs
from backend.ml.history import STATUSES, parse_timestamp
from backend.ml.monitoring.health import (
    DEGRADED_STATES,
    Health,
    newest_check,
    read_fleet,
    running_run,
)
from backend.ml.registry.aliases import version_number
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services

# Upper bounds in whole seconds, for runs from a one-model retrain (seconds) to a full
# cycle on a large database (up to two hours). Whole seconds because the history counts
# archived runs by duration rounded up to a second, which is exact only for whole bounds.
DURATION_BUCKETS = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
MODEL_LABELS = ("model", "group")
NAN = float("nan")
SHADOW_LABELS = (*MODEL_LABELS, "candidate")
SHADOW_COUNTERS = {  # summary key -> help; counted since this process started
    "batches": "Batches the shadow scorer took from its queue (compared, skipped, timed "
               "out or failed)",
    "dropped": "Batches not shadowed because the queue was full",
    "timeouts": "Batches whose candidate scoring exceeded SHADOW_TIMEOUT_SECONDS "
                "(result discarded)",
    "errors": "Batches the candidate failed to load or score",
    "skipped": "Batches with no candidate newer than production to compare",
}


def duration_buckets(durations: dict[int, int]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, +Inf last, from counts by whole seconds rounded up."""
    buckets = [(str(float(bound)), float(sum(n for s, n in durations.items() if s <= bound)))
               for bound in DURATION_BUCKETS]
    return [*buckets, ("+Inf", float(sum(durations.values())))]


class FleetCollector(Collector):
    """Collects the `ml_*` families from one app's settings, services, runner, scheduler
    and shadow scorer (each of the last two None when this process runs none)."""

    def __init__(self, settings: Settings, services: Services, runner: Runner,
                 scheduler: Scheduler | None, shadow: ShadowScorer | None = None) -> None:
        self.settings = settings
        self.services = services
        self.runner = runner
        self.scheduler = scheduler
        self.shadow = shadow

    def collect(self) -> Iterator[Metric]:
        yield from self._models()
        yield from self._history()
        yield from self._process()
        yield from self._shadow()

    def _models(self) -> Iterator[Metric]:
        """Per model, from the core's one health function (as GET /ml/models, the dashboard
        and the CLI), so the views never disagree."""
        fleet = read_fleet(self.services.store, self.settings,
                           on_recover=self.services.report_recovery)

        def gauge(name: str, documentation: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=MODEL_LABELS)

        score = gauge("ml_model_score", "Holdout score of the production version when it "
                      "was trained (NaN: no production version)")
        live = gauge("ml_model_live_score", "Score on fresh labelled rows in the newest "
                     "check of the model (absent: never checked, or too few fresh rows)")
        threshold = gauge("ml_model_threshold", "Score below which the model counts as "
                          "failing")
        version = gauge("ml_model_production_version", "Number of the production version "
                        "(v0003 is 3; 0: none)")
        trained = gauge("ml_model_last_trained_timestamp_seconds", "When the production "
                        "version was trained, Unix seconds (absent: no production version)")
        drift = gauge("ml_model_drift_psi", "Largest feature PSI against the training data "
                      "in the newest check (absent: no drift measured)")
        state = GaugeMetricFamily("ml_model_state", "1 for the model's health state (one of "
                                  + ", ".join(Health) + "), 0 for the others",
                                  labels=[*MODEL_LABELS, "state"])
        degraded = gauge("ml_model_degraded", "1 while the model's state is "
                         + " or ".join(sorted(DEGRADED_STATES)) + ", else 0")
        # An estimate is never a score: its own names, absent when the newest check had
        # labels enough (or the model, an anomaly detector, is not estimated).
        estimated = {key: gauge(f"ml_model_estimated_score{suffix}", text)
                     for key, suffix, text in (
            ("estimated_value", "", "Score estimated on fresh rows whose labels are pending "
             "in the newest check (an estimate, not a measured score; absent: none)"),
            ("estimated_low", "_low", "Low end of the estimated score's 95% interval"),
            ("estimated_high", "_high", "High end of the estimated score's 95% interval"))}
        for row in fleet:
            labels = [row.name, row.group]
            meta = row.production or {}
            score.add_metric(labels, NAN if meta.get("score") is None else meta["score"])
            threshold.add_metric(labels, row.threshold)
            version.add_metric(labels, version_number(meta.get("version")))
            stamp = parse_timestamp(meta.get("created_at"))
            if stamp is not None:
                trained.add_metric(labels, stamp.timestamp())
            check = newest_check(self.services.history, row.name) or {}
            if isinstance(check.get("live_score"), int | float):
                live.add_metric(labels, check["live_score"])
            psi = (check.get("drift") or {}).get("max_psi")
            if isinstance(psi, int | float):
                drift.add_metric(labels, psi)
            for each in Health:
                state.add_metric([*labels, each.value], float(row.health.state == each))
            degraded.add_metric(labels, float(row.health.degraded))
            for key, value in row.estimated_fields().items():
                if key in estimated and value is not None:
                    estimated[key].add_metric(labels, value)
        yield from (score, live, threshold, version, trained, drift, state, degraded,
                    *estimated.values())

    def _history(self) -> Iterator[Metric]:
        totals = self.services.history.metrics_totals()
        runs = CounterMetricFamily("ml_training_runs", "Finished training runs by status, "
                                   "all time", labels=["status"])
        by_status = {s: 0 for s in STATUSES if s != "running"} | totals["by_status"]
        for status, count in sorted(by_status.items()):
            runs.add_metric([status], count)
        yield runs
        yield HistogramMetricFamily(
            "ml_training_duration_seconds", "Wall time of finished training runs that "
            "recorded one, all time", buckets=duration_buckets(totals["durations"]),
            sum_value=totals["duration_sum"])
        retrains = CounterMetricFamily("ml_retrain_attempts", "Retraining runs the monitor "
                                       "started for a degraded model, all time",
                                       labels=["model"])
        for name in specs.MODEL_NAMES:
            retrains.add_metric([name], totals["retrains_by_model"].get(name, 0))
        yield retrains
        alerts = CounterMetricFamily("ml_alerts", "Alerts raised by kind, all time",
                                     labels=["kind"])
        for kind, count in sorted(totals["alerts_by_kind"].items()):
            alerts.add_metric([kind], count)
        yield alerts
        suppressed = CounterMetricFamily(
            "ml_alerts_suppressed", "Alerts held back by the cooldown (the same kind and "
            "model was raised at the same or a graver level within ALERT_COOLDOWN_SECONDS), "
            "by kind and level, since the cooldown file was made", labels=["kind", "level"])
        counts = suppressed_counts(self.settings.LOGS_DIR,
                                   on_recover=self.services.report_recovery)
        for (kind, level), count in sorted(counts.items()):
            suppressed.add_metric([kind, level], count)
        yield suppressed

    def _process(self) -> Iterator[Metric]:
        active = self.scheduler is not None and bool(self.scheduler.status()
                                                      .get("scheduler_active"))
        yield GaugeMetricFamily("ml_scheduler_lease_held", "1 if the process answering "
                                "holds the scheduler lease and runs the schedule, else 0",
                                value=float(active))
        running = running_run(self.settings.LOGS_DIR, on_recover=self.services.report_recovery)
        yield GaugeMetricFamily("ml_training_in_progress", "1 while a training run holds "
                                "the training lock (any process), else 0",
                                value=float(running is not None))

    def _shadow(self) -> Iterator[Metric]:
        """Shadow scoring of candidates (backend/app/shadow.py): counts kept in this
        process's memory, unlike everything above, so each uvicorn worker reports the share
        of requests it answered, from zero at its start. Off: `ml_shadow_enabled` 0 only."""
        scorer = self.shadow
        yield GaugeMetricFamily("ml_shadow_enabled", "1 if this process scores candidates "
                                "in the shadow of predict (SHADOW_CANDIDATES), else 0",
                                value=float(scorer is not None))
        if scorer is None:
            return
        yield GaugeMetricFamily("ml_shadow_queue_batches", "Batches waiting for the shadow "
                                "scorer in this process", value=float(scorer.queue.qsize()))
        counters = {key: CounterMetricFamily(f"ml_shadow_{key}", text, labels=MODEL_LABELS)
                    for key, text in SHADOW_COUNTERS.items()}
        # Labelled by candidate too: they restart from zero when a newer candidate appears.
        compared = GaugeMetricFamily("ml_shadow_compared_rows", "Rows the current candidate "
                                     "was compared on", labels=SHADOW_LABELS)
        agreement = GaugeMetricFamily("ml_shadow_agreement", "Share of compared rows where "
                                      "the candidate agrees with production (for an anomaly "
                                      "detector without threshold: rank correlation)",
                                      labels=SHADOW_LABELS)
        difference = GaugeMetricFamily("ml_shadow_mean_abs_difference", "Regressors: mean "
                                       "absolute difference between the candidate's and "
                                       "production's values", labels=SHADOW_LABELS)
        for name in scorer.names():
            summary = scorer.summary(name)
            if summary is None:
                continue
            labels = [name, specs.get_spec(name).group]
            for key, family in counters.items():
                family.add_metric(labels, summary[key])
            if summary["candidate"] is None:
                continue
            with_candidate = [*labels, summary["candidate"]]
            compared.add_metric(with_candidate, summary["compared"])
            if summary["agreement"] is not None:
                agreement.add_metric(with_candidate, summary["agreement"])
            if summary.get("mean_abs_difference") is not None:
                difference.add_metric(with_candidate, summary["mean_abs_difference"])
        yield from (*counters.values(), compared, agreement, difference)


def exposition(collector: Collector) -> bytes:
    """The collector's metrics in the Prometheus text format. A registry of its own per
    scrape: nothing is kept between scrapes, and the process-wide default registry (with
    whatever else registered there) stays out of it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
