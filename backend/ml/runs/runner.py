"""One training run end to end: load, train, save, gate, back up, promote, record.

Exactly one run at a time across every process sharing `LOGS_DIR`: a run holds
`training.lock` (`progress.RunLock`, a kernel lock dropped when the last process holding it
dies), and a second caller gets `RunInProgressError` naming the running run (id, trigger,
start) at once: the lock is tried before anything else happens.

`run` trains in this process (the CLI, a check's retrain). `start`, and `run` of an
isolated runner, is how the web process and the scheduler run one: this process takes the
lock, writes the run's progress and its "running" record, then hands the lock to a worker
process (`worker`) that continues the run. So a trigger is answered 409 or 202 in
milliseconds, and a 202 names a run that is already on record. `RunHandle` watches the
worker: one that ends without recording an outcome (killed, out of memory, a broken
install) has its run recorded as failed with the tail of its stderr, and only then is the
lock let go.

What a crash (kill -9) at each step leaves behind, and why that is safe:
  before or while training   a history record "running"; the next run (or service start)
                             sees the lock free and marks it "interrupted"
  while saving a version     an orphan model file without .json: ignored, pruned later
  after saving, before the   saved candidates that production never pointed at; the
  promotion                  aliases are untouched, so production is the old set, whole
  during promotions          each alias move is one atomic registry write: every model
                             serves either its old or its new version, both verified
  before the final record    the run shows "interrupted"; its versions carry its run id

A write the disk refuses (full, read-only, no permission) fails the run like any other
error: it is recorded as failed when the history can still be written, and the exception
carries a note saying whether it is on record (the CLI prints it on its one line).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import joblib
import pandas as pd

from backend.ml.data import loading
from backend.ml.fleet import specs
from backend.ml.fsio import lock_holder
from backend.ml.history.document import TRIGGERS
from backend.ml.monitoring.shift import shift_holdouts
from backend.ml.monitoring.steps import WallClock
from backend.ml.runs import worker
from backend.ml.runs.launcher import Launcher
from backend.ml.runs.progress import (
    LOCK_FILE,
    ProgressWriter,
    RunLock,
    RunProgress,
    current_run,
    progress_file,
)
from backend.ml.runs.promote import production_fingerprints, save_and_promote
from backend.ml.runs.services import Services
from backend.ml.training import trainer
from backend.ml.training.results import summarize

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def seconds_since(started_at: str) -> float:
    return round((datetime.now(UTC) - datetime.fromisoformat(started_at)).total_seconds(), 3)


def fit_threads(n_jobs: int) -> int:
    """The threads a fit gets in a pool of `n_jobs` workers (joblib gives each worker
    cpu_count // n_jobs). A fit or a scoring in the run's own process gets no more: OpenMP
    teams wider than the free cores stall on a busy machine (a 0.6 s fit took 8 s with two
    threads on two busy cores, and scoring production on a holdout 2 s instead of 0.1 s)."""
    workers: int = max(1, joblib.effective_n_jobs(n_jobs))
    return max(1, int(joblib.cpu_count()) // workers)


class Runner:
    """Runs training. With `isolated=True`, `run` executes in a worker process, as `start`
    always does, so a web server or the scheduler thread never shares its interpreter (and
    GIL) with the heavy work: status answers stay fast."""

    def __init__(self, services: Services, *, isolated: bool = False,
                 launcher: Launcher | None = None, clock: WallClock | None = None) -> None:
        self.isolated = isolated
        self.services = services
        self.settings = services.settings
        # The time a run trains at: it reads only the labels known by then. A worker
        # process (isolated runs) reads the wall clock: a simulated one is for in-process runs.
        self.clock = clock or WallClock()
        # An isolated runner (the web process, the headless scheduler) keeps a worker ready.
        self.launcher = launcher or Launcher(services.settings, keep_spare=isolated)

    def close(self) -> None:
        """End the spare worker, if any; a run in progress goes on."""
        self.launcher.close()

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
                "started_at": progress.started_at,
                "holder": lock_holder(self.settings.LOGS_DIR / LOCK_FILE)}

    def recover_interrupted(self) -> list[str]:
        """Mark runs left "running" by a dead process as "interrupted". A history the disk
        will not take stays as it is (logged): the service starts and serves anyway, and
        the next run marks them."""
        progress = self.progress()
        running_id = progress.run_id if progress else None
        try:
            marked: list[str] = self.services.history.mark_interrupted(
                lambda run_id: run_id == running_id)
        except OSError as exc:
            logger.error("runs left running are not marked interrupted: %s", exc)
            return []
        return marked

    # ---- a run ------------------------------------------------------------------------------

    def run(self, *, trigger: str = "manual", models: str | Sequence[str] | None = None,
            options: Mapping[str, trainer.TrainOptions] | None = None, actor: str = "cli",
            run_id: str | None = None,
            on_result: Callable[[trainer.TrainResult], None] | None = None,
            lock: RunLock | None = None) -> dict[str, Any]:
        """Train, gate and record; the guide's result shape plus `run_id` and decisions.

        Raises RunInProgressError when another run holds the lock (nothing is written).
        `lock`, from `take_lock`, is the lock already taken for this run: the run owns it.
        """
        if self.isolated:
            _, handle = self.start(trigger=trigger, models=models, options=options,
                                   actor=actor, run_id=run_id, lock=lock)
            return handle.result()
        lock = self._owned(lock, trigger, models, run_id)
        try:
            names = self._checked(trigger, models)
            progress, started_at = self._begin(lock, names, actor)
            return self._run_locked(lock.run_id, trigger, names, options or {}, actor,
                                    on_result, progress, started_at)
        finally:
            lock.release()

    def start(self, *, trigger: str = "manual", models: str | Sequence[str] | None = None,
              options: Mapping[str, trainer.TrainOptions] | None = None, actor: str = "cli",
              run_id: str | None = None, lock: RunLock | None = None
              ) -> tuple[str, RunHandle]:
        """Begin a run and hand it to a worker process; its id and the handle watching it.

        Returns once the run holds the lock and is on record as "running" (its progress
        written), so an HTTP trigger can answer 202 truthfully; raises RunInProgressError at
        once when another run holds the lock, and WorkerError (the run recorded as failed)
        when no worker process can be started. `lock`, from `take_lock`, is the lock already
        taken for this run: the run owns it.
        """
        lock = self._owned(lock, trigger, models, run_id)
        try:
            names = self._checked(trigger, models)
            _, started_at = self._begin(lock, names, actor)
        except BaseException:
            lock.release()
            raise
        run_id = lock.run_id
        handle = RunHandle(self, lock, run_id, names, started_at)
        request = worker.train_request(trigger=trigger, models=names, actor=actor,
                                       run_id=run_id, options=options, started_at=started_at)
        try:
            child = self.launcher.launch(request, fds=[lock.fileno()])
        except Exception as exc:  # no interpreter to run it (a removed virtualenv, ...)
            error = worker.WorkerError(f"training run {run_id} could not start its worker "
                                       f"process: {type(exc).__name__}: {exc}", run_id=run_id)
            handle.settle(error)
            raise error from exc
        lock.name(child.pid)
        handle.watch(child)
        return run_id, handle

    def continue_run(self, lock: RunLock, *, run_id: str, trigger: str,
                     models: str | Sequence[str] | None, actor: str, started_at: str,
                     options: Mapping[str, trainer.TrainOptions] | None = None
                     ) -> dict[str, Any]:
        """(In the worker process.) Train and record a run that `start` began in another
        process, under the lock it handed over. The lock is not released here: the starter
        lets go of it once it has seen this process end."""
        names = self._checked(trigger, models)
        progress = ProgressWriter(self.settings.LOGS_DIR,
                                  on_recover=self.services.report_recovery)
        progress.begin(run_id, trigger, names, started_at=started_at)
        lock.fileno()  # still held: handed over, not released
        return self._run_locked(run_id, trigger, names, options or {}, actor, None, progress,
                                started_at)

    @staticmethod
    def _checked(trigger: str, models: str | Sequence[str] | None) -> list[str]:
        """The model names of a run request; ValueError for a bad trigger or name."""
        if trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}")
        return specs.parse_names(list(models) if models is not None and not isinstance(
            models, str) else models)

    def take_lock(self, trigger: str = "manual", run_id: str | None = None) -> RunLock:
        """The training lock for a new run (`run_id`, default a new one), started now; for
        `run` or `start`. RunInProgressError naming the running run when another holds it.
        A few system calls either way, nothing that waits: an event loop may call it."""
        if trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}")
        return RunLock.take(self.settings.LOGS_DIR, run_id=run_id or new_run_id(),
                            trigger=trigger, on_recover=self.services.report_recovery)

    def _owned(self, lock: RunLock | None, trigger: str,
               models: str | Sequence[str] | None, run_id: str | None) -> RunLock:
        """The run's lock: the one given, or taken now (the request checked first)."""
        if lock is None:
            self._checked(trigger, models)  # before anything is taken or written
            return self.take_lock(trigger, run_id)
        if lock.trigger != trigger or (run_id is not None and run_id != lock.run_id):
            lock.release()
            raise ValueError(f"the lock was taken for run {lock.run_id} ({lock.trigger}), "
                             f"not {run_id or 'a new run'} ({trigger})")
        return lock

    def _begin(self, lock: RunLock, names: list[str],
               actor: str) -> tuple[ProgressWriter, str]:
        """(Lock held.) The run's progress, then its "running" record; its start time."""
        history = self.services.history
        progress = ProgressWriter(self.settings.LOGS_DIR,
                                  on_recover=self.services.report_recovery)
        run_id, trigger, started_at = lock.run_id, lock.trigger, lock.started_at
        progress.begin(run_id, trigger, names, started_at=started_at)  # readers see it first
        try:
            history.mark_interrupted(lambda _run_id: False)  # we hold the lock: none can run
            history.append_training({"run_id": run_id, "timestamp": started_at,
                                     "trigger": trigger, "status": "running", "actor": actor,
                                     "models": names})
        except BaseException as exc:
            progress.end()
            if isinstance(exc, Exception):
                exc.add_note(f"run {run_id} did not start: it could not be put on record")
            raise
        logger.info("training run %s (%s) started: %d models", run_id, trigger, len(names))
        return progress, started_at

    def _run_locked(self, run_id: str, trigger: str, names: list[str],
                    options: Mapping[str, trainer.TrainOptions], actor: str,
                    on_result: Callable[[trainer.TrainResult], None] | None,
                    progress: ProgressWriter, started_at: str) -> dict[str, Any]:
        try:
            return self._train_and_record(run_id, trigger, names, options, actor, on_result,
                                          progress, started_at)
        finally:
            progress.end()

    def _train_and_record(self, run_id: str, trigger: str, names: list[str],
                          options: Mapping[str, trainer.TrainOptions], actor: str,
                          on_result: Callable[[trainer.TrainResult], None] | None,
                          progress: ProgressWriter, started_at: str) -> dict[str, Any]:
        history = self.services.history

        def progress_cb(result: trainer.TrainResult) -> None:
            state = progress.finished(result.name)
            logger.info("run %s: %s %s (%d/%d)", run_id, result.name,
                        f"{result.metric}={result.score:.4f}" if result.ok
                        else "unchanged" if result.unchanged
                        else f"failed: {result.error}", state.done, len(names))
            if on_result is not None:
                on_result(result)

        from threadpoolctl import threadpool_limits

        try:
            # Fits and scores in this process get the threads a pool worker would get
            with threadpool_limits(limits=fit_threads(self.settings.TRAINING_N_JOBS)):
                chosen = [specs.get_spec(n) for n in names]
                tables = self._load(chosen)
                options = {**shift_holdouts(self.settings.LOGS_DIR, chosen, tables, options,
                                            on_recover=self.services.report_recovery),
                           **options}
                results = self._fit(chosen, tables, options, progress_cb)
                decisions = save_and_promote(self.services, run_id, results, tables, actor)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            self.record_failure(run_id, names, started_at, message, exc)
            self.alert_failure(run_id, message)
            raise
        summary = summarize(results, timestamp=started_at,
                            duration_seconds=seconds_since(started_at),
                            decisions=decisions, run_id=run_id, trigger=trigger)
        try:
            history.update_training(run_id, **{k: v for k, v in summary.items()
                                               if k not in ("run_id", "timestamp", "trigger")})
        except Exception as exc:
            exc.add_note(f"run {run_id} ended {summary['status']} (promoted: "
                         f"{', '.join(summary['promoted']) or 'none'}) but is not on record")
            raise
        self._alert_outcome(run_id, results, summary)
        logger.info("training run %s finished: %s, %d/%d trained, promoted %s", run_id,
                    summary["status"], summary["successful_models"], len(results),
                    ", ".join(summary["promoted"]) or "none")
        return summary

    def _load(self, chosen: Sequence[specs.ModelSpec]) -> dict[str, pd.DataFrame]:
        """Each table the models need, once, with only the columns they read and only the
        labels known at the run's time (the clock's now)."""
        engine = loading.open_readonly(self.settings.DATABASE_URL)
        as_of = self.clock.now()
        return {table: loading.load_table(engine, table, columns=wanted, labels_as_of=as_of)
                for table, wanted in trainer.columns_by_table(chosen).items()}

    def _fit(self, chosen: Sequence[specs.ModelSpec], tables: Mapping[str, pd.DataFrame],
             options: Mapping[str, trainer.TrainOptions],
             on_result: Callable[[trainer.TrainResult], None]) -> list[trainer.TrainResult]:
        """The fits, on the configured backend; one model is fitted here, since starting a
        pool of processes for it costs more than the fit."""
        settings = self.settings
        thresholds = {s.name: settings.threshold_for(s) for s in chosen}
        # A model whose data and parameters are production's is not fitted again
        known = production_fingerprints(self.services.store, [s.name for s in chosen])
        if len(chosen) == 1 and settings.TRAINING_BACKEND == "loky":
            return trainer.train_many(chosen, tables, thresholds=thresholds, n_jobs=1,
                                      options=options, on_result=on_result,
                                      fingerprints=known)
        with trainer.parallel_backend(settings.TRAINING_BACKEND,
                                      settings.DASK_SCHEDULER_ADDRESS):
            return trainer.train_many(chosen, tables, thresholds=thresholds,
                                      n_jobs=settings.TRAINING_N_JOBS, options=options,
                                      on_result=on_result, fingerprints=known)

    def record_failure(self, run_id: str, names: Sequence[str], started_at: str,
                       message: str, exc: BaseException | None = None) -> bool:
        """Record the run as failed with `message`; whether it is on record. With `exc`, a
        note on it says which (a full disk may refuse the record too)."""
        try:
            self.services.history.update_training(
                run_id, status="failed", duration_seconds=seconds_since(started_at),
                models_trained=len(names), successful_models=0, failed_models=len(names),
                errors=[message])
        except Exception as failed:
            logger.error("run %s failed (%s) and could not be recorded as failed: %s", run_id,
                         message, failed)
            if exc is not None:
                exc.add_note(f"run {run_id} could not be recorded as failed: {failed}")
            recorded = False
        else:
            if exc is not None:
                exc.add_note(f"run {run_id} is recorded as failed")
            recorded = True
        return recorded

    def alert_failure(self, run_id: str, message: str) -> None:
        """The `training_failed` alert of a whole run; never raises (a full disk may refuse
        the alert's record too)."""
        try:
            self.services.alerts.notify("error", "training_failed",
                                        f"run {run_id} failed: {message}", run_id=run_id)
        except Exception:
            logger.exception("the training_failed alert of run %s could not be raised", run_id)

    def _alert_outcome(self, run_id: str, results: Sequence[trainer.TrainResult],
                       summary: Mapping[str, Any]) -> None:
        """One alert per model whose fit failed, and one when the run took too long."""
        alerts = self.services.alerts
        for result in results:
            if result.failed:
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


class RunHandle(threading.Thread):
    """Watches the worker process of a run begun by `Runner.start`, in a daemon thread:
    when the worker ends, makes sure the run's end is on record (a worker that died before
    recording it has the run recorded as failed, with the tail of its stderr), then
    releases the lock. `result()` waits for that and returns the run's summary, or raises
    what ended it."""

    def __init__(self, runner: Runner, lock: RunLock, run_id: str, names: Sequence[str],
                 started_at: str) -> None:
        super().__init__(name=f"training-{run_id}", daemon=True)
        self.runner, self.lock, self.run_id = runner, lock, run_id
        self.names, self.started_at = list(names), started_at
        self.child: Any = None
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._settled = threading.Event()

    def watch(self, child: Any) -> None:
        self.child = child
        self.start()

    def run(self) -> None:
        try:
            self._result = worker.collect(self.child, reap=False)
        except Exception as exc:
            self._error = exc
            logger.warning("training run %s ended with an error: %s", self.run_id, exc)
        self.settle(self._error)
        self.child.wait()  # it answered and is winding down; the lock is already free

    def settle(self, error: BaseException | None) -> None:
        """The run's end on record (when `error` ended it and the worker did not record
        it), its progress removed, the lock released, then the failure alerted. Never
        raises."""
        failed: str | None = None
        try:
            if error is not None:
                record = self.runner.services.history.get_training(self.run_id)
                if record is None or record.get("status") == "running":
                    failed = str(error)
                    self.runner.record_failure(self.run_id, self.names, self.started_at,
                                               failed)
                    with contextlib.suppress(Exception):
                        progress_file(self.runner.settings.LOGS_DIR).delete()
        except Exception:
            logger.exception("the end of training run %s could not be recorded", self.run_id)
        finally:
            self.lock.release()
            self._settled.set()
            if failed is not None:
                self.runner.alert_failure(self.run_id, failed)
            self.runner.launcher.ended()

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The run's summary once it is settled (on record, lock released); raises what
        ended it, or TimeoutError."""
        if not self._settled.wait(timeout):
            raise TimeoutError(f"training run {self.run_id} is still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result
