"""One training run end to end: load, train, save, gate, back up, promote, record.

Exactly one run at a time across every process sharing `LOGS_DIR`: the run holds
`training.lock` (a kernel lock, dropped if the process dies) and a second caller gets
`RunInProgressError` naming the running run. Its progress (see `progress`) is written the
instant after the lock is taken and removed when the run ends.

What a crash (kill -9) at each step leaves behind, and why that is safe:
  before or while training   a history record "running"; the next run (or service start)
                             sees the lock free and marks it "interrupted"
  while saving a version     an orphan model file without .json: ignored, pruned later
  after saving, before the   saved candidates that production never pointed at; the
  promotion                  aliases are untouched, so production is the old set, whole
  during promotions          each alias move is one atomic registry write: every model
                             serves either its old or its new version, both verified
  before the final record    the run shows "interrupted"; its versions carry its run id
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from backend.ml.data import loading
from backend.ml.fleet import specs
from backend.ml.fsio import LockTimeout, file_lock, lock_holder
from backend.ml.history.document import TRIGGERS
from backend.ml.runs import worker
from backend.ml.runs.progress import (
    LOCK_FILE,
    ProgressWriter,
    RunInProgressError,
    RunProgress,
    current_run,
    holder_run_id,
)
from backend.ml.runs.promote import save_and_promote
from backend.ml.runs.services import Services
from backend.ml.training import trainer
from backend.ml.training.results import summarize

logger = logging.getLogger(__name__)
START_TIMEOUT_SECONDS = 120.0


def new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


class Runner:
    """Runs training. With `isolated=True`, `run` executes in a worker process, as `start`
    always does, so a web server or the scheduler thread never shares its interpreter (and
    GIL) with the heavy work: status answers stay fast."""

    def __init__(self, services: Services, *, isolated: bool = False) -> None:
        self.isolated = isolated
        self.services = services
        self.settings = services.settings
        self.lock_path = self.settings.LOGS_DIR / LOCK_FILE

    # ---- who is running ---------------------------------------------------------------------

    def progress(self) -> RunProgress | None:
        """The running run's progress, from any process; None when no run holds the lock."""
        return current_run(self.settings.LOGS_DIR, on_recover=self.services.report_recovery)

    def current(self) -> dict[str, Any] | None:
        """`progress()` as a dict; while the run has not written its progress yet, only its
        `run_id`, `trigger`, `started_at` and the lock `holder` (no model lists)."""
        progress = self.progress()
        if progress is None:
            return None
        if progress.models:
            return progress.model_dump()
        return {"run_id": progress.run_id or None, "trigger": progress.trigger,
                "started_at": progress.started_at, "holder": lock_holder(self.lock_path)}

    def recover_interrupted(self) -> list[str]:
        """Mark runs left "running" by a dead process as "interrupted"."""
        progress = self.progress()
        running_id = progress.run_id if progress else None
        marked: list[str] = self.services.history.mark_interrupted(
            lambda run_id: run_id == running_id)
        return marked

    # ---- a run ------------------------------------------------------------------------------

    def run(self, *, trigger: str = "manual", models: str | Sequence[str] | None = None,
            options: Mapping[str, trainer.TrainOptions] | None = None, actor: str = "cli",
            run_id: str | None = None,
            on_result: Callable[[trainer.TrainResult], None] | None = None) -> dict[str, Any]:
        """Train, gate and record; the guide's result shape plus `run_id` and decisions.

        Raises RunInProgressError when another run holds the lock (nothing is written).
        """
        names = self._checked(trigger, models)
        run_id = run_id or new_run_id()
        if self.isolated:
            summary: dict[str, Any] = worker.run_job(self.settings, worker.train_request(
                trigger=trigger, models=names, actor=actor, run_id=run_id, options=options))
            return summary
        try:
            with file_lock(self.lock_path, timeout=0, purpose=f"run_id={run_id} {trigger}"):
                return self._run_locked(run_id, trigger, names, options or {}, actor,
                                        on_result)
        except LockTimeout as exc:
            raise RunInProgressError(holder_run_id(exc.holder)) from None

    def start(self, *, trigger: str = "manual", models: str | Sequence[str] | None = None,
              options: Mapping[str, trainer.TrainOptions] | None = None, actor: str = "cli",
              run_id: str | None = None) -> tuple[str, threading.Thread]:
        """Begin a run in a worker process; its id and the thread that reaps the worker.

        Returns once the worker holds the lock (so an HTTP trigger can answer 202
        truthfully) and raises RunInProgressError at once when another run holds it.
        """
        names = self._checked(trigger, models)  # before a process starts
        run_id = run_id or new_run_id()
        child = worker.spawn(self.settings, worker.train_request(
            trigger=trigger, models=names, actor=actor, run_id=run_id, options=options))
        # A poll, not a retry: nothing failed, the worker just has not got there yet.
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while holder_run_id(lock_holder(self.lock_path)) != run_id:
            if child.poll() is not None:  # it ended before we saw it hold the lock
                try:
                    worker.collect(child)
                except RunInProgressError:
                    raise
                except Exception:
                    if self.services.history.get_training(run_id) is None:
                        raise  # refused before it ran: nothing on record
                break  # it ran (and maybe failed, on record) before we looked
            if time.monotonic() > deadline:
                child.kill()
                raise worker.WorkerError(f"training process for {run_id} did not start in "
                                         "time", run_id=run_id)
            time.sleep(0.02)
        reaper = threading.Thread(target=self._reap, args=(child, run_id),
                                  name=f"training-{run_id}", daemon=True)
        reaper.start()
        return run_id, reaper

    @staticmethod
    def _checked(trigger: str, models: str | Sequence[str] | None) -> list[str]:
        """The model names of a run request; ValueError for a bad trigger or name."""
        if trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}")
        return specs.parse_names(list(models) if models is not None and not isinstance(
            models, str) else models)

    @staticmethod
    def _reap(child: Any, run_id: str) -> None:
        if child.returncode is not None:
            return  # already collected
        try:
            worker.collect(child)
        except Exception as exc:  # on record and alerted by the worker; this is for the log
            logger.warning("training run %s ended with an error: %s", run_id, exc)

    def _run_locked(self, run_id: str, trigger: str, names: list[str],
                    options: Mapping[str, trainer.TrainOptions], actor: str,
                    on_result: Callable[[trainer.TrainResult], None] | None) -> dict[str, Any]:
        progress = ProgressWriter(self.settings.LOGS_DIR, on_recover=self.services.report_recovery)
        progress.begin(run_id, trigger, names)  # first: readers see the run's models at once
        try:
            return self._train_and_record(run_id, trigger, names, options, actor, on_result,
                                          progress)
        finally:
            progress.end()

    def _train_and_record(self, run_id: str, trigger: str, names: list[str],
                          options: Mapping[str, trainer.TrainOptions], actor: str,
                          on_result: Callable[[trainer.TrainResult], None] | None,
                          progress: ProgressWriter) -> dict[str, Any]:
        history, settings = self.services.history, self.settings
        history.mark_interrupted(lambda _run_id: False)  # we hold the lock: none can run
        started = time.perf_counter()
        timestamp = datetime.now(UTC).isoformat()
        history.append_training({"run_id": run_id, "timestamp": timestamp, "trigger": trigger,
                                 "status": "running", "actor": actor, "models": names})
        logger.info("training run %s (%s) started: %d models", run_id, trigger, len(names))

        def progress_cb(result: trainer.TrainResult) -> None:
            state = progress.finished(result.name)
            logger.info("run %s: %s %s (%d/%d)", run_id, result.name,
                        f"{result.metric}={result.score:.4f}" if result.ok
                        else f"failed: {result.error}", state.done, len(names))
            if on_result is not None:
                on_result(result)

        try:
            chosen = [specs.get_spec(n) for n in names]
            tables = trainer.load_tables(loading.open_readonly(settings.DATABASE_URL), chosen)
            thresholds = {s.name: settings.threshold_for(s) for s in chosen}
            with trainer.parallel_backend(settings.TRAINING_BACKEND,
                                          settings.DASK_SCHEDULER_ADDRESS):
                results = trainer.train_many(chosen, tables, thresholds=thresholds,
                                             n_jobs=settings.TRAINING_N_JOBS,
                                             options=options, on_result=progress_cb)
            decisions = save_and_promote(self.services, run_id, results, tables, actor)
        except Exception as exc:
            duration = round(time.perf_counter() - started, 3)
            message = f"{type(exc).__name__}: {exc}"
            history.update_training(run_id, status="failed", duration_seconds=duration,
                                    models_trained=len(names), successful_models=0,
                                    failed_models=len(names), errors=[message])
            self.services.alerts.notify("error", "training_failed",
                                        f"run {run_id} failed: {message}")
            raise
        summary = summarize(results, timestamp=timestamp,
                            duration_seconds=time.perf_counter() - started,
                            decisions=decisions, run_id=run_id, trigger=trigger)
        history.update_training(run_id, **{k: v for k, v in summary.items()
                                           if k not in ("run_id", "timestamp", "trigger")})
        self._alert_outcome(run_id, results, summary)
        logger.info("training run %s finished: %s, %d/%d trained, promoted %s", run_id,
                    summary["status"], summary["successful_models"], len(results),
                    ", ".join(summary["promoted"]) or "none")
        return summary

    def _alert_outcome(self, run_id: str, results: Sequence[trainer.TrainResult],
                       summary: Mapping[str, Any]) -> None:
        """One alert per model whose fit failed, and one when the run took too long."""
        alerts = self.services.alerts
        for result in results:
            if not result.ok:
                alerts.notify("error", "training_failed",
                              f"{result.name} could not be trained in run {run_id}: "
                              f"{result.error}", model=result.name, run_id=run_id,
                              error=result.error, threshold=result.threshold)
        duration = float(summary.get("duration_seconds") or 0.0)
        limit = self.settings.TRAINING_SLOW_SECONDS
        if duration > limit:
            alerts.notify("warning", "training_slow",
                          f"run {run_id} took {duration:.0f} s, over TRAINING_SLOW_SECONDS "
                          f"({limit:g} s)", run_id=run_id, duration_seconds=round(duration, 1),
                          limit_seconds=limit)
