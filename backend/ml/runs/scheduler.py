"""The scheduler: daily training, periodic checks, catch-up, and the lease.

A private `schedule.Scheduler` runs in one daemon thread that sleeps on a stop Event
between jobs (no busy loop). Only the process holding the lease (`LOGS_DIR/scheduler.lease`,
a kernel lock released when its holder exits or dies) runs jobs; every other process,
e.g. the other uvicorn workers, waits on standby and retries the lease every few
seconds, so a dead holder is replaced within `lease_retry_seconds`.

Intended quirks:
- A job that falls due while a training run holds the training lock (a manual trigger,
  say) is *coalesced*: it runs once when the lock is free, however often it fell due.
- `schedule` does not run missed jobs; catch-up does that once at start: when no full
  training has run since the latest scheduled daily time (or nothing was ever trained),
  one `catch-up` run starts the scheduler.
- A job that raises is logged, alerted (and so recorded in the history) and the thread
  lives on.
- The check is whatever callable it is given; the service gives it one that runs each check
  in a worker process (`worker.ChildCheck`). If that callable has `terminate()`, `stop()`
  calls it, so a check running in a child ends with the scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import schedule

from backend.ml.fleet import specs
from backend.ml.fsio import LockTimeout, file_lock, lock_holder
from backend.ml.runs.clock import next_daily_time, previous_daily_time
from backend.ml.runs.progress import RunInProgressError
from backend.ml.runs.runner import Runner

logger = logging.getLogger(__name__)
LEASE_FILE = "scheduler.lease"
FULL_RUN_TRIGGERS = ("daily", "catch-up", "manual")


def covered_every_model(record: dict[str, Any]) -> bool:
    """Whether a run covered every spec that existed when it ran. A run of some models names
    them (`models`); a record without that list is a full run when it is of this format
    (it has `unchanged`) or, from an older release, trained as many models as there are
    specs now."""
    if "models" in record:
        return False
    return "unchanged" in record or record.get("models_trained") == len(specs.SPECS)


class TrainingScheduler:
    def __init__(self, runner: Runner, *, check: Callable[[], object] | None = None,
                 lease_retry_seconds: float = 5.0, max_sleep_seconds: float = 30.0) -> None:
        self.runner = runner
        self.settings = runner.settings
        self.check = check
        self.tz = ZoneInfo(self.settings.TRAINING_TIMEZONE)
        self.lease_path = self.settings.LOGS_DIR / LEASE_FILE
        self.lease_retry_seconds = lease_retry_seconds
        self.max_sleep_seconds = max_sleep_seconds
        self.jobs = schedule.Scheduler()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._holding = False
        self._deferred: set[str] = set()
        self.last_check: str | None = None
        self._schedule_jobs()

    # ---- control ----------------------------------------------------------------------------

    def start(self) -> None:
        """Run the scheduler thread (or its standby loop); returns at once."""
        if not self.settings.SCHEDULER_ENABLED:
            logger.info("scheduler disabled (SCHEDULER_ENABLED=false)")
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        reset = getattr(self.check, "reset", None)
        if callable(reset):
            reset()
        self._thread = threading.Thread(target=self._main, name="training-scheduler",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        terminate = getattr(self.check, "terminate", None)
        if callable(terminate):  # a check running in a child: end it, do not wait an hour
            terminate()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def active(self) -> bool:
        return self._holding and self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        next_check = None
        if self.active and self._check_job.next_run is not None:
            next_check = self._check_job.next_run.astimezone().isoformat()
        return {
            "enabled": self.settings.SCHEDULER_ENABLED,
            "scheduler_active": self.active,
            "lease_holder": lock_holder(self.lease_path),
            "training_time": self.settings.DAILY_TRAINING_TIME,
            "timezone": self.settings.TRAINING_TIMEZONE,
            "next_run": next_daily_time(now, self.settings.DAILY_TRAINING_TIME, self.tz)
            .astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S"),
            "next_check": next_check,
            "check_interval_seconds": self.settings.PERFORMANCE_CHECK_INTERVAL,
            "last_check": self.last_check,
        }

    # ---- the thread -------------------------------------------------------------------------

    def _main(self) -> None:
        purpose = f"host={socket.gethostname()} scheduler"
        while not self._stop.is_set():
            try:
                with file_lock(self.lease_path, timeout=0, purpose=purpose):
                    self._holding = True
                    logger.info("scheduler lease taken (%s)", purpose)
                    self._serve()
                    return
            except LockTimeout as exc:
                logger.debug("scheduler on standby: lease held by %s", exc.holder)
            except Exception:  # never let the standby loop die
                logger.exception("scheduler lease loop failed; retrying")
            finally:
                if self._holding:
                    logger.info("scheduler lease released")
                self._holding = False
            self._stop.wait(self.lease_retry_seconds)

    def _serve(self) -> None:
        logger.info("scheduled daily training at %s (%s)", self.settings.DAILY_TRAINING_TIME,
                    self.settings.TRAINING_TIMEZONE)
        logger.info("scheduled performance checks every %d seconds",
                    self.settings.PERFORMANCE_CHECK_INTERVAL)
        self.catch_up()
        while not self._stop.is_set():
            self.tick()
            idle = self.jobs.idle_seconds
            wait = self.max_sleep_seconds if idle is None else min(max(idle, 0.05),
                                                                  self.max_sleep_seconds)
            if self._deferred:
                wait = min(wait, 1.0)
            self._stop.wait(wait)

    def tick(self) -> None:
        """One pass: deferred jobs first, then whatever `schedule` says is due."""
        for kind in sorted(self._deferred):
            self._run_job(kind)
        self.jobs.run_pending()

    # ---- jobs -------------------------------------------------------------------------------

    def _schedule_jobs(self) -> None:
        self.jobs.clear()
        self._check_job = self.jobs.every(self.settings.PERFORMANCE_CHECK_INTERVAL).seconds.do(
            self._run_job, "check")
        self._schedule_daily()

    def _schedule_daily(self) -> None:
        """A one-shot job at the next daily instant, computed in the training time zone.

        `schedule`'s own `.at(time, tz)` fires twice on a spring-forward night; a one-shot
        job re-armed from zoneinfo after each run fires exactly once a day.
        """
        now = datetime.now(UTC)
        self.next_daily = next_daily_time(now, self.settings.DAILY_TRAINING_TIME, self.tz)
        seconds = max(1, math.ceil((self.next_daily - now).total_seconds()))
        self.jobs.every(seconds).seconds.do(self._daily)

    def _daily(self) -> type[schedule.CancelJob]:
        self._run_job("daily")
        self._schedule_daily()
        return schedule.CancelJob

    def _run_job(self, kind: str) -> None:
        """Run a job, wrapped: a run in progress defers it; an exception is alerted."""
        try:
            if kind == "check":
                if self.check is None:
                    return
                running = self.runner.progress()
                if running is not None:
                    raise RunInProgressError(running.run_id or None)
                self.check()
                self.last_check = datetime.now(UTC).isoformat()
            else:
                self.runner.run(trigger=kind, actor="scheduler")
            self._deferred.discard(kind)
        except RunInProgressError as exc:
            if kind not in self._deferred:
                logger.info("%s job deferred: training run %s is going", kind, exc.run_id)
            self._deferred.add(kind)
        except Exception as exc:
            self._deferred.discard(kind)
            if self._stop.is_set():  # cut short by stop(): not a failure to alert
                logger.info("%s job ended by the scheduler's stop: %s", kind, exc)
                return
            logger.exception("%s job failed", kind)
            with contextlib.suppress(Exception):
                self.runner.services.alerts.notify(
                    "error", "job_failed", f"{kind} job failed: {type(exc).__name__}: {exc}")

    def catch_up(self) -> bool:
        """Run once now if the latest scheduled daily run was missed; whether it ran."""
        missed_since = previous_daily_time(datetime.now(UTC), self.settings.DAILY_TRAINING_TIME,
                                           self.tz)
        recent = self.runner.services.history.trainings(limit=50)
        for record in recent:
            stamp = record.get("timestamp")
            if (record.get("trigger") in FULL_RUN_TRIGGERS and covered_every_model(record)
                    and record.get("status") in ("success", "partial") and stamp
                    and datetime.fromisoformat(stamp).astimezone(UTC) >= missed_since):
                return False
        logger.info("no full training since %s: catch-up run now", missed_since.isoformat())
        if recent:  # a first start has nothing to miss; a service that trained before does
            with contextlib.suppress(Exception):
                self.runner.services.alerts.notify(
                    "warning", "missed_run",
                    f"the daily run due {missed_since.isoformat()} did not happen (service "
                    f"down or the run failed); catching up now",
                    missed_since=missed_since.isoformat())
        self._run_job("catch-up")
        return True
