"""The periodic check: live accuracy on fresh labelled rows, drift, retraining, A/B.

Each production model is scored on labelled rows it never learnt from (newer than its
training window, or labelled after its training read the labels; `fresh.py`): the newest
LIVE_WINDOW_MINIMUMS fresh minimums of them, so a shift shows within days however old the
version is. Fewer than `fresh_minimum(spec)` rows (or, for a metric that ranks events,
fewer than MIN_EVENTS of each class) is "insufficient_fresh_data", not a verdict. Drift,
on the same rows, is the PSI of each feature against the training reference stored with
the version, and the share of fresh values outside the range of its training rows. One
check entry per run goes into the history.

Verdicts, with hysteresis so a model hovering at its threshold does not flap:
  healthy   at or above threshold (+ margin once it had been degraded)
  watch     below threshold, but once by less than the margin, or not surely: the high end
            of the live score's 90% bootstrap interval reaches the threshold (a day of
            fresh rows is noisy; the window fills check by check, so a real shortfall shows)
  degraded  surely below threshold, by more than the margin or twice in a row
A degraded model is retrained through the runner (trigger "retrain"), each attempt trying
something different: 1 all data including the fresh rows, 2 recency weights, 3 a small
hyper-parameter search; with backoff between attempts. Each holds out only the newest half
of the fresh rows, and at most RETRAIN_HOLDOUT_MINIMUMS times the model's fresh minimum
(the gate compares with production there), so it learns from the rest: a shift that began
late in a long fresh window reaches the fit, not only its holdout. When the live errors
surely stepped inside the window (`shift.rows_since_shift`), only the newest half of
the rows since the step is held out: the fit learns the new world from the other half.
After the last failed attempt: one alert, the best version keeps serving (the promotion
gate guarantees it), and the model cools down until new data arrives or the next daily
run passes.

A/B (`ab.py`): the newest candidate newer than production is scored on the same fresh
rows; one that beats production on `ab_wins` consecutive checks is promoted.

Too few fresh labelled rows, but enough whose labels are pending: the score is estimated
on those (`estimated.py`): verdict `estimated`, or `estimated_below_threshold` (a warning;
a retrain only with ESTIMATE_ACTION=retrain), never a live score; each estimate is realized
beside its labels when a later check finds them.

Alerts before a model fails (`early_warnings.py`): drift that hurts the live score beyond its
noise (`drift_detected`, the rule and why in `backend.ml.training.drift`), and live scores
sliding check after check (`performance_degradation`). A model whose standing verdict was
degraded and is healthy again, by a check or by a retrain, raises one `recovered` (info).

Progress (`on_progress`, for a person watching: the CLI prints it): a `CheckStep` after
each model is checked, before each retrain attempt, and each second of a backoff wait
(the seconds left counting down), so a check that waits minutes between retries says so.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from backend.ml.data import schema
from backend.ml.fleet import specs
from backend.ml.fleet.scoring import get_metric
from backend.ml.monitoring.ab import ab_test
from backend.ml.monitoring.early_warnings import early_warnings
from backend.ml.monitoring.estimated import estimate_pending, realize
from backend.ml.monitoring.fresh import (
    MIN_EVENTS,
    events_short,
    fresh_minimum,
    fresh_rows,
    fresh_tables,
    learnt_labels_until,
    live_window,
    pending_rows,
    retrain_holdout_start,
    seen_ranges,
)
from backend.ml.monitoring.shift import rows_since_shift
from backend.ml.monitoring.state import (
    Cooldown,
    ModelMonitorState,
    monitor_file,
)
from backend.ml.monitoring.steps import CheckStep, ProgressFn, WallClock
from backend.ml.monitoring.verdict import CheckVerdict, Verdict
from backend.ml.registry.verify import check_audit_chain
from backend.ml.runs.clock import next_daily_time
from backend.ml.runs.runner import Runner
from backend.ml.training import trainer
from backend.ml.training.drift import (
    LiveScore,
    drift_report,
    score_interval,
    suffers,
)
from backend.ml.training.results import model_outcome

logger = logging.getLogger(__name__)
MARGIN = 0.02
RETRY_STRATEGIES = (
    trainer.TrainOptions("full"),
    trainer.TrainOptions("recency_weighted", half_life_days=30.0),
    trainer.TrainOptions("search"),
)


class Monitor:
    def __init__(self, runner: Runner, *, backoff_seconds: float = 60.0, ab_wins: int = 3,
                 stop: threading.Event | None = None,
                 on_progress: ProgressFn | None = None, clock: WallClock | None = None,
                 retrain: bool = True) -> None:
        self.runner = runner
        self.clock = clock or WallClock()
        # The service always retrains what is degraded; a rehearsal of a policy that does
        # not (backend.ml.backtest) passes False and degraded models keep serving.
        self.retrain = retrain
        self.on_progress = on_progress
        self.services = runner.services
        self.settings = runner.settings
        self.backoff_seconds = backoff_seconds
        self.ab_wins = ab_wins
        self._stop = stop or threading.Event()
        self.state = monitor_file(self.settings.LOGS_DIR,
                                  on_recover=self.services.report_recovery)
        # Per check: where a retrain's holdout starts, and the rows since a step in the live
        # errors that placed it (None: no step was sure)
        self._holdout: dict[str, tuple[str, int | None]] = {}
        self._seen: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}  # per check

    def _commit(self, entries: Mapping[str, ModelMonitorState]) -> None:
        """Replace these models' entries under the lock, keeping every other entry as it is
        on disk now (see `state.py`)."""
        with self.state.update() as state:
            state.root.update(entries)

    # ---- the check --------------------------------------------------------------------------

    def run_check(self) -> dict[str, Any]:
        """Check every production model, retrain what is degraded; the history entry."""
        store = self.services.store
        check_audit_chain(store, self.services.alerts.notify)  # one alert; serving goes on
        known = self.state.read()
        state = {name: known.of(name).model_copy(deep=True) for name in specs.MODEL_NAMES}
        served = {name: store.load_serving(name, on_alert=self.services.alerts.callback(name))
                  for name in specs.MODEL_NAMES}
        now = self.clock.now()
        tables = fresh_tables(self.settings.DATABASE_URL,
                              {n: s[1]["data_end"] for n, s in served.items() if s is not None},
                              labels_as_of=now,
                              learnt_until={n: learnt_labels_until(s[1])
                                            for n, s in served.items() if s is not None})
        check_id = f"check-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
        self._stamp = (check_id, now)  # what an estimate made by this check is filed under
        timestamp = now.isoformat()
        verdicts: dict[str, CheckVerdict] = {}
        for name, serving in served.items():
            if serving is None:
                verdicts[name] = CheckVerdict(Verdict.NO_MODEL)
            else:
                verdicts[name] = self._check_model(name, serving, tables, state[name])
                early_warnings(self.services.alerts, name, verdicts[name], state[name])
            checked = verdicts[name]
            self._report(CheckStep("checked", name, done=len(verdicts), total=len(served),
                                   verdict=checked.verdict.value,
                                   live_score=checked.live_score,
                                   threshold=checked.threshold))
        # An estimated drop retrains only when ESTIMATE_ACTION says so (estimated.py).
        on_estimate = self.settings.ESTIMATE_ACTION == "retrain"
        degraded = [n for n, v in verdicts.items() if self.retrain and (
            v.verdict is Verdict.DEGRADED
            or (on_estimate and v.verdict is Verdict.ESTIMATED_BELOW_THRESHOLD))]
        self._commit({name: self._settle(name, known.of(name), state[name], verdicts[name],
                                         timestamp)
                      for name in served if name not in degraded})
        for name in degraded:
            verdicts[name].retrain = self._retrain(name, state[name], tables,
                                                   self._holdout.get(name), verdicts[name])
            self._commit({name: self._settle(name, known.of(name), state[name],
                                             verdicts[name], timestamp)})
        entry = {"check_id": check_id, "timestamp": timestamp,
                 "models": {name: v.as_record() for name, v in verdicts.items()}}
        self.services.history.append_check(entry)
        summary = {v: sum(c.verdict is v for c in verdicts.values()) for v in Verdict}
        logger.info("check %s: %s", entry["check_id"], ", ".join(
            f"{k.value} {v}" for k, v in summary.items() if v))
        return entry

    def _check_model(self, name: str, serving: tuple[Any, Mapping[str, Any]],
                     tables: Mapping[str, pd.DataFrame],
                     model_state: ModelMonitorState) -> CheckVerdict:
        estimator, meta = serving
        spec = specs.get_spec(name)
        threshold = self.settings.threshold_for(spec)
        tcol = schema.time_column(spec.table)
        learnt = learnt_labels_until(meta)
        fresh = fresh_rows(spec, tables[spec.table], meta["data_end"], learnt)
        version = str(meta["version"])
        realized = realize(spec, estimator, fresh, version, model_state) or None
        if len(fresh) < fresh_minimum(spec):
            # Too few labels for a verdict: estimate on the rows whose labels are pending.
            self._holdout.pop(name, None)  # a retrain on an estimate splits by time
            result = CheckVerdict(Verdict.INSUFFICIENT_FRESH_DATA, version, threshold,
                                  meta.get("score"), len(fresh), needed=fresh_minimum(spec),
                                  realized=realized)
            estimate_pending(spec, estimator, meta,
                             pending_rows(spec, tables[spec.table], meta["data_end"], learnt),
                             result,
                             model_state, check_id=self._stamp[0], at=self._stamp[1],
                             alerts=self.services.alerts)
            return result
        model_state.estimate = None  # labels enough: they, not an estimate, decide
        if short := events_short(spec, fresh):
            return CheckVerdict(Verdict.INSUFFICIENT_FRESH_DATA, version, threshold,
                                meta.get("score"), len(fresh), needed_events=MIN_EVENTS,
                                events=MIN_EVENTS - short, realized=realized)
        window = live_window(spec, fresh)
        y = trainer.target_values(spec, window[spec.target])
        values = trainer.decision_values(spec, estimator, window[list(spec.features)])
        live = round(get_metric(spec.metric).score(y, values), 6)
        holdout = meta.get("score")
        drift = drift_report(spec, meta.get("feature_stats", {}), window,
                             seen=self._seen_by(spec, meta))
        # The interval costs a bootstrap: only worth it when the score is under the
        # threshold (is it surely?), or the inputs moved somewhere new and the score fell.
        interval = (score_interval(spec.metric, y, values)
                    if live < threshold or (drift["novel_features"] and suffers(
                        LiveScore(live, live, live, len(window)), holdout)) else None)
        surely_below = interval is not None and interval.high < threshold
        # A verdict about the version that served before says nothing about this one.
        same = model_state.version in (None, version)
        was = (model_state.verdict or "healthy") if same else "healthy"
        if surely_below and (live < threshold - MARGIN or was in ("watch", "degraded")):
            verdict = Verdict.DEGRADED
        elif live < threshold:
            verdict = Verdict.WATCH
        elif was == "degraded" and live < threshold + MARGIN:
            verdict = Verdict.DEGRADED_RECOVERING
        else:
            verdict = Verdict.HEALTHY
        # A retrain holds out the newest fresh rows; after a shift, half of those since it
        shifted = None
        if verdict is Verdict.DEGRADED:
            shifted = rows_since_shift(spec, y, values)
            if shifted is None and len(window) == len(fresh):
                # Surely under on every row since its training, with no step among them: the
                # world shifted before the first (a version held by the gate since, say)
                shifted = len(window)
        self._holdout[name] = (retrain_holdout_start(spec, fresh[tcol], shifted), shifted)
        if shifted is not None:  # every later fit learns from the rows since (state.py)
            model_state.shift_since = window[tcol].iloc[len(window) - shifted].to_pydatetime(
                ).replace(tzinfo=UTC)
        model_state.verdict, model_state.version = verdict.standing, version
        if verdict is Verdict.HEALTHY:
            model_state.cooldown = None
        result = CheckVerdict(verdict, version, threshold, holdout, len(window),
                              live_score=live,
                              live_interval=None if interval is None else (
                                  round(interval.low, 6), round(interval.high, 6)),
                              drift=drift, realized=realized)
        ab_test(self.services.store, spec, window, live, model_state, result,
                wins_needed=self.ab_wins)
        return result

    def _seen_by(self, spec: specs.ModelSpec,
                 meta: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
        """Where the version's training rows went, for its numeric table-column features."""
        cut = str(meta.get("holdout_start") or meta["data_end"])
        key = (spec.table, cut)
        if key not in self._seen:
            self._seen[key] = seen_ranges(self.settings.DATABASE_URL, spec.table, cut)
        ranges = self._seen[key]
        return {f: ranges[f] for f in spec.numeric if f in ranges}

    def _settle(self, name: str, before: ModelMonitorState, after: ModelMonitorState,
                result: CheckVerdict, timestamp: str) -> ModelMonitorState:
        """`after` with the time its standing verdict began; a model that was degraded and
        is healthy now (a check found it so, or a retrain promoted a passing version) raises
        one `recovered`, through the one alert path, so it is on the model's timeline."""
        if after.verdict != before.verdict:
            after.since = datetime.fromisoformat(timestamp)
        if before.verdict == Verdict.DEGRADED.value and after.verdict == Verdict.HEALTHY.value:
            version = after.version or result.version
            scores: dict[str, Any] = {}
            if result.retrain and result.retrain.get("recovered"):
                scores["score"] = result.retrain["attempts"][-1].get("score")
                how = f"a retrain promoted {version} (score {scores['score']})"
            else:
                scores["live_score"] = result.live_score
                how = f"{version} scores {result.live_score} on fresh rows"
            since = (f" (degraded since {before.since.isoformat(timespec='seconds')})"
                     if before.since is not None else "")
            self.services.alerts.notify(
                "info", "recovered", f"{name} is healthy again{since}: {how}", model=name,
                version=version, previous_version=before.version, threshold=result.threshold,
                degraded_since=None if before.since is None else before.since.isoformat(),
                **scores)
        return after

    # ---- retraining -------------------------------------------------------------------------

    def _retrain(self, name: str, model_state: ModelMonitorState,
                 tables: Mapping[str, pd.DataFrame], holdout: tuple[str, int | None] | None,
                 checked: CheckVerdict) -> dict[str, Any]:
        """Up to MAX_RETRAIN_ATTEMPTS different fits; `checked` is the check's verdict,
        `holdout` where the fits' holdout starts and the rows since a shift that placed it
        (None: the trainer's own split by time)."""
        spec = specs.get_spec(name)
        newest = str(tables[spec.table][schema.time_column(spec.table)].max())
        cooldown = model_state.cooldown
        if cooldown is not None and cooldown.newest_data == newest and \
                self.clock.now() < cooldown.until:
            return {"skipped": f"cooling down until {cooldown.until.isoformat()} or new data"}
        model_state.cooldown = None
        limit = min(self.settings.MAX_RETRAIN_ATTEMPTS, len(RETRY_STRATEGIES))
        holdout_since, shifted = holdout or (None, None)
        split = {"holdout_since": holdout_since, "rows_since_shift": shifted}
        attempts = []
        for k in range(1, limit + 1):
            options = replace(RETRY_STRATEGIES[k - 1], holdout_since=holdout_since)
            self._report(CheckStep("retraining", name, attempt=k, attempts=limit,
                                   strategy=options.strategy))
            summary = self.runner.run(trigger="retrain", models=[name], actor="scheduler",
                                      options={name: options})
            detail = model_outcome(summary, name)
            attempts.append({"attempt": k, "strategy": options.strategy,
                             "run_id": summary["run_id"], "score": detail.get("score"),
                             "promoted": detail.get("promoted", False)})
            logger.info("retrain %s attempt %d/%d (%s): score %s, promoted %s", name, k, limit,
                        options.strategy, detail.get("score"), detail.get("promoted"))
            if detail.get("promoted") and detail.get("passed"):
                model_state.verdict, model_state.version = "healthy", detail.get("version")
                return {"recovered": True, "attempts": attempts, **split}
            if k < limit and self._backoff(self.backoff_seconds * 2 ** (k - 1), name, k + 1,
                                           limit):
                break  # shutting down
        until = next_daily_time(self.clock.now(), self.settings.DAILY_TRAINING_TIME,
                                ZoneInfo(self.settings.TRAINING_TIMEZONE))
        model_state.cooldown = Cooldown(newest_data=newest, until=until)
        scores = [a["score"] for a in attempts if a.get("score") is not None]
        self.services.alerts.notify(
            "critical", "accuracy_below_threshold",
            f"{len(attempts)} retraining attempts did not bring {name} back above its "
            f"threshold; the best version keeps serving; cooling down until new data or "
            f"{until.isoformat()}", model=name, attempts=attempts,
            score=max(scores, default=None), live_score=checked.live_score,
            threshold=checked.threshold)
        return {"recovered": False, "attempts": attempts, "cooldown_until": until.isoformat(),
                **split}


    # ---- progress ---------------------------------------------------------------------------

    def _report(self, step: CheckStep) -> None:
        """Tell the watcher, if any; a watcher that fails never stops the check."""
        if self.on_progress is None:
            return
        try:
            self.on_progress(step)
        except Exception:
            logger.exception("the check's progress callback failed")

    def _backoff(self, seconds: float, name: str, attempt: int, attempts: int) -> bool:
        """Wait `seconds` before retry `attempt`, telling the watcher the seconds left each
        second; True when the check is being stopped."""
        if self.on_progress is None or seconds <= 0:
            return self.clock.wait(self._stop, seconds)
        deadline = self.clock.monotonic() + seconds
        while (left := deadline - self.clock.monotonic()) > 0:
            self._report(CheckStep("waiting", name, attempt=attempt, attempts=attempts,
                                   seconds_left=left))
            if self.clock.wait(self._stop, min(1.0, left)):
                return True
        return False


def run_check(runner: Runner, **options: Any) -> dict[str, Any]:
    """One check with a fresh `Monitor` (its state lives on disk, not in the object)."""
    return Monitor(runner, **options).run_check()
