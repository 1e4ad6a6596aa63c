"""The periodic check: live accuracy on fresh labelled rows, drift, retraining, A/B.

Each production model is scored on labelled rows newer than its training window (the
end of its holdout). Fewer than `fresh_minimum(spec)` rows (or, for a metric that ranks
events, fewer than MIN_EVENTS of each class) is "insufficient_fresh_data", not a verdict.
Drift is the PSI of each feature against the training reference stored with the version,
and the share of fresh values outside the range of its training rows. One check entry per
run goes into the history.

Verdicts, with hysteresis so a model hovering at its threshold does not flap:
  healthy   at or above threshold (+ margin once it had been degraded)
  watch     below threshold once, by less than the margin: confirmed at the next check
  degraded  below threshold by more than the margin, or below it twice in a row
A degraded model is retrained through the runner (trigger "retrain"), each attempt trying
something different: 1 all data including the fresh rows, 2 recency weights, 3 a small
hyper-parameter search; with backoff between attempts. Each holds out only the newest half
of the fresh rows, and at most RETRAIN_HOLDOUT_MINIMUMS times the model's fresh minimum
(the gate compares with production there), so it learns from the rest: a shift that began
late in a long fresh window reaches the fit, not only its holdout.
After the last failed attempt: one alert, the best version keeps serving (the promotion
gate guarantees it), and the model cools down until new data arrives or the next daily
run passes.

A/B: the newest candidate newer than production is scored on the same fresh rows; one
that beats production on `ab_wins` consecutive checks is promoted ("ab_promote").

Alerts before a model fails (`early_warnings`): drift that hurts the live score beyond its
noise (`drift_detected`, the rule and why in `backend.ml.training.drift`), and live scores
sliding check after check (`performance_degradation`). A model whose standing verdict was
degraded and is healthy again, by a check or by a retrain, raises one `recovered` (info).

Progress (`on_progress`, for a person watching: the CLI prints it): a `CheckStep` after
each model is checked, before each retrain attempt, and each second of a backoff wait
(the seconds left counting down), so a check that waits minutes between retries says so.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa

from backend.ml.data import loading, schema
from backend.ml.fleet import specs
from backend.ml.fleet.scoring import get_metric
from backend.ml.history.stats import TREND_WINDOW, score_trend
from backend.ml.monitoring.state import (
    ABState,
    Cooldown,
    ModelMonitorState,
    ScoreTrail,
    monitor_file,
)
from backend.ml.monitoring.verdict import CheckVerdict, Verdict
from backend.ml.registry.verify import check_audit_chain
from backend.ml.runs.clock import next_daily_time
from backend.ml.runs.runner import Runner
from backend.ml.training import trainer
from backend.ml.training.drift import (
    LiveScore,
    drift_alert_due,
    drift_report,
    live_interval,
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
# Live scores declining over the last TREND_WINDOW checks (history.stats.score_trend, the
# one trend rule) are a performance_degradation warning, even above the threshold.


# A ROC AUC ranks the labelled events (incidents) against the rest: on the first fresh
# day's handful of incidents it is noise (0.58 on a calm day, holdout 0.75), and a
# "degraded" verdict on noise means three futile retrains and a critical alert. So such a
# metric needs this many rows of each class, besides `fresh_minimum` rows.
MIN_EVENTS = 10
# A retrain's holdout is at most this many fresh minimums of rows (the newest): enough for
# the gate's interval and slices, while the fit learns from every older fresh row.
RETRAIN_HOLDOUT_MINIMUMS = 5


@dataclass(frozen=True)
class CheckStep:
    """One step of a check, for whoever watches it.

    kind "checked": `model` was checked (`done` of `total`), with its `verdict`;
    "retraining": retrain `attempt` of `attempts` of `model` begins (`strategy`);
    "waiting": `seconds_left` of the backoff before that attempt (one step a second).
    """

    kind: str
    model: str
    done: int = 0
    total: int = 0
    verdict: str | None = None
    live_score: float | None = None
    threshold: float | None = None
    attempt: int = 0
    attempts: int = 0
    strategy: str | None = None
    seconds_left: float = 0.0

    def line(self) -> str:
        """The step in words, one line."""
        if self.kind == "waiting":
            left = math.ceil(self.seconds_left)
            return f"waiting {left} s before retry {self.attempt} of {self.model}"
        if self.kind == "retraining":
            return (f"retraining {self.model}: attempt {self.attempt} of {self.attempts} "
                    f"({self.strategy})")
        score = ("" if self.live_score is None or self.threshold is None
                 else f"  live {self.live_score:.3f} / {self.threshold:.2f}")
        return f"{self.done:2d}/{self.total} {self.model:<24} {self.verdict}{score}"


ProgressFn = Callable[[CheckStep], None]


class WallClock:
    """Where the check reads the time and waits between retrains: the real clock, a wait
    that a stop cuts short. The service always runs on this one; a rehearsal of simulated
    days (`backend.ml.backtest`) passes one whose time is the simulated day's and whose
    waits only move that time on, so the same check runs unchanged at another time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait `seconds`; True when `stop` was set (the check is being stopped)."""
        return stop.wait(seconds)


def fresh_minimum(spec: specs.ModelSpec) -> int:
    return max(30, spec.min_samples // 5)


def retrain_holdout_start(spec: specs.ModelSpec, fresh_times: pd.Series) -> str:
    """Where a retrain's holdout begins among the fresh rows' times (in time order): the
    newest half, at most RETRAIN_HOLDOUT_MINIMUMS fresh minimums of rows."""
    held = min(len(fresh_times) // 2, RETRAIN_HOLDOUT_MINIMUMS * fresh_minimum(spec))
    return str(fresh_times.iloc[len(fresh_times) - max(held, 1)].isoformat())


def fresh_tables(database_url: str, data_ends: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """The tables of these models (name: end of its version's training window), each from
    the oldest window end among its models onward."""
    starts: dict[str, datetime] = {}
    lookback: dict[str, int] = {}
    for name, data_end in data_ends.items():
        spec = specs.get_spec(name)
        end = pd.Timestamp(data_end).to_pydatetime()
        starts[spec.table] = min(starts.get(spec.table, end), end)
        lookback[spec.table] = max(lookback.get(spec.table, 0), spec.lookback_days)
    # Lag features need the rows before the window: as far back as the longest lag a spec
    # of the table declares, and a day more.
    engine = loading.open_readonly(database_url)
    return {t: loading.load_table(engine, t, window=loading.Window(
        start=start - pd.Timedelta(days=lookback[t] + 1))) for t, start in starts.items()}


def seen_ranges(database_url: str, table: str, before: str) -> dict[str, tuple[float, float]]:
    """The range (low, high) of each numeric column of `table` over its rows before
    `before`: where a version's training rows went. One aggregate query, no rows loaded."""
    source = schema.get_table(table)
    columns = [c.name for c in source.columns if c.name != "id"
               and isinstance(c.type, sa.Integer | sa.Float | sa.Numeric)]
    query = sa.select(*(f(source.c[c]) for c in columns for f in (sa.func.min, sa.func.max)))
    query = query.where(source.c[schema.time_column(table)] < pd.Timestamp(before).to_pydatetime())
    with loading.open_readonly(database_url).connect() as conn:
        row = conn.execute(query).one()
    return {c: (float(row[2 * i]), float(row[2 * i + 1])) for i, c in enumerate(columns)
            if row[2 * i] is not None}


def fresh_rows(spec: specs.ModelSpec, table: pd.DataFrame, data_end: str) -> pd.DataFrame:
    """A table's labelled, prepared rows newer than a version's training window: what a
    check scores the version on."""
    labelled, _ = trainer.labelled_frame(spec, table)
    return labelled[labelled[schema.time_column(spec.table)] > pd.Timestamp(data_end)]


def events_short(spec: specs.ModelSpec, fresh: pd.DataFrame) -> int:
    """How many more rows of its rarer class a metric that ranks events needs (else 0)."""
    if not get_metric(spec.metric).needs_scores:
        return 0
    counts = pd.Series(trainer.target_values(spec, fresh[spec.target])).value_counts()
    rarer = int(counts.min()) if len(counts) == 2 else 0
    return max(0, MIN_EVENTS - rarer)


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
        self._fresh_midpoint: dict[str, str] = {}  # per check: where a retrain's holdout starts
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
        tables = fresh_tables(self.settings.DATABASE_URL,
                              {n: s[1]["data_end"] for n, s in served.items() if s is not None})
        now = self.clock.now()
        check_id = f"check-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
        timestamp = now.isoformat()
        verdicts: dict[str, CheckVerdict] = {}
        for name, serving in served.items():
            if serving is None:
                verdicts[name] = CheckVerdict(Verdict.NO_MODEL)
            else:
                verdicts[name] = self._check_model(name, serving, tables, state[name])
                self.early_warnings(name, verdicts[name], state[name])
            checked = verdicts[name]
            self._report(CheckStep("checked", name, done=len(verdicts), total=len(served),
                                   verdict=checked.verdict.value,
                                   live_score=checked.live_score,
                                   threshold=checked.threshold))
        degraded = [n for n, v in verdicts.items()
                    if v.verdict is Verdict.DEGRADED and self.retrain]
        self._commit({name: self._settle(name, known.of(name), state[name], verdicts[name],
                                         timestamp)
                      for name in served if name not in degraded})
        for name in degraded:
            verdicts[name].retrain = self._retrain(name, state[name], tables,
                                                   self._fresh_midpoint[name], verdicts[name])
            self._commit({name: self._settle(name, known.of(name), state[name],
                                             verdicts[name], timestamp)})
        entry = {"check_id": check_id, "timestamp": timestamp,
                 "models": {name: v.as_record() for name, v in verdicts.items()}}
        self.services.history.append_check(entry)
        summary = {v: sum(c.verdict is v for c in verdicts.values())
                   for v in (Verdict.HEALTHY, Verdict.WATCH, Verdict.DEGRADED,
                             Verdict.INSUFFICIENT_FRESH_DATA)}
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
        fresh = fresh_rows(spec, tables[spec.table], meta["data_end"])
        version = str(meta["version"])
        if len(fresh) < fresh_minimum(spec):
            return CheckVerdict(Verdict.INSUFFICIENT_FRESH_DATA, version, threshold,
                                meta.get("score"), len(fresh), needed=fresh_minimum(spec))
        if short := events_short(spec, fresh):
            return CheckVerdict(Verdict.INSUFFICIENT_FRESH_DATA, version, threshold,
                                meta.get("score"), len(fresh), needed_events=MIN_EVENTS,
                                events=MIN_EVENTS - short)
        self._fresh_midpoint[name] = retrain_holdout_start(spec, fresh[tcol])
        live = round(trainer.evaluate(spec, estimator, fresh), 6)
        holdout = meta.get("score")
        drift = drift_report(spec, meta.get("feature_stats", {}), fresh,
                             seen=self._seen_by(spec, meta))
        # The interval costs a bootstrap: only worth it when the inputs moved somewhere new
        # and the score itself fell (its high end can only be higher).
        interval = (live_interval(spec, estimator, fresh)
                    if drift["novel_features"]
                    and suffers(LiveScore(live, live, live, len(fresh)), holdout) else None)
        # A verdict about the version that served before says nothing about this one.
        same = model_state.version in (None, version)
        was = (model_state.verdict or "healthy") if same else "healthy"
        if live < threshold - MARGIN or (live < threshold and was in ("watch", "degraded")):
            verdict = Verdict.DEGRADED
        elif live < threshold:
            verdict = Verdict.WATCH
        elif was == "degraded" and live < threshold + MARGIN:
            verdict = Verdict.DEGRADED_RECOVERING
        else:
            verdict = Verdict.HEALTHY
        model_state.verdict, model_state.version = verdict.standing, version
        if verdict is Verdict.HEALTHY:
            model_state.cooldown = None
        result = CheckVerdict(verdict, version, threshold, holdout, len(fresh),
                              live_score=live,
                              live_interval=None if interval is None else (
                                  round(interval.low, 6), round(interval.high, 6)),
                              drift=drift)
        self._ab_test(name, spec, fresh, live, model_state, result)
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

    def early_warnings(self, name: str, result: CheckVerdict,
                       model_state: ModelMonitorState) -> None:
        """Alerts before a model fails: drifting inputs, and live scores sliding check after
        check (each a warning, once per cooldown)."""
        if result.live_score is None:
            return
        alerts, threshold, live = self.services.alerts, result.threshold, result.live_score
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

    def _ab_test(self, name: str, spec: specs.ModelSpec, fresh: pd.DataFrame, live: float,
                 model_state: ModelMonitorState, result: CheckVerdict) -> None:
        store = self.services.store
        candidates = [v for v in store.versions(name) if v.get("state") == "candidate"]
        production = store.aliases(name)["production"]
        newest = candidates[0] if candidates else None
        if newest is None or production is None or newest["version"] < production:
            model_state.ab = None
            return
        try:
            estimator, _ = store.load(name, newest["version"])
            score = round(trainer.evaluate(spec, estimator, fresh), 6)
        except Exception as exc:  # an unloadable candidate simply loses
            logger.warning("A/B: %s %s cannot be scored: %s", name, newest["version"], exc)
            return
        ab = model_state.ab
        wins = ab.wins + 1 if ab is not None and ab.version == newest["version"] else 1
        wins = wins if score > live else 0
        model_state.ab = ABState(version=newest["version"], wins=wins)
        result.ab = {"candidate": newest["version"], "score": score, "wins": wins}
        if wins >= self.ab_wins:
            store.promote(name, newest["version"], actor="scheduler", action="ab_promote",
                          reason=f"A/B: beat production on {wins} consecutive checks "
                                 f"({score:.4f} vs {live:.4f} on fresh rows)")
            model_state.ab = None
            result.ab["promoted"] = True

    # ---- retraining -------------------------------------------------------------------------

    def _retrain(self, name: str, model_state: ModelMonitorState,
                 tables: Mapping[str, pd.DataFrame], holdout_since: str,
                 checked: CheckVerdict) -> dict[str, Any]:
        """Up to MAX_RETRAIN_ATTEMPTS different fits; `checked` is the check's verdict."""
        spec = specs.get_spec(name)
        newest = str(tables[spec.table][schema.time_column(spec.table)].max())
        cooldown = model_state.cooldown
        if cooldown is not None and cooldown.newest_data == newest and \
                self.clock.now() < cooldown.until:
            return {"skipped": f"cooling down until {cooldown.until.isoformat()} or new data"}
        model_state.cooldown = None
        limit = min(self.settings.MAX_RETRAIN_ATTEMPTS, len(RETRY_STRATEGIES))
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
                return {"recovered": True, "attempts": attempts}
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
        return {"recovered": False, "attempts": attempts, "cooldown_until": until.isoformat()}


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
