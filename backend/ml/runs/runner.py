"""One training run end to end: load, train, save, gate, back up, promote, record.

Exactly one run at a time across every process sharing `LOGS_DIR`: the run holds
`training.lock` (a kernel lock, dropped if the process dies) and a second caller gets
`RunInProgressError` naming the running run. Progress (models done of total, models in
flight) is written to `training_progress.json` so any process can report it.

What a crash (kill -9) at each step leaves behind, and why that is safe:
  before or while training   a history record "running"; the next run (or service start)
                             sees the lock free and marks it "interrupted"
  while saving a version     an orphan .joblib without .json: ignored, pruned later
  after saving, before the   saved candidates that production never pointed at; the
  promotion                  aliases are untouched, so production is the old set, whole
  during promotions          each alias move is one atomic registry write: every model
                             serves either its old or its new version, both verified
  before the final record    the run shows "interrupted"; its versions carry its run id
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from backend.ml.alerts.service import Alerts
from backend.ml.config import REPO_ROOT, Settings
from backend.ml.data import loading, schema
from backend.ml.fleet import specs
from backend.ml.fsio import LockTimeout, atomic_write_json, file_lock, lock_holder, read_json
from backend.ml.history.document import History
from backend.ml.registry.backups import backup_production, prune_backups, rebuild_history
from backend.ml.registry.store import ModelStore, promotion_decision
from backend.ml.training import trainer
from backend.ml.training.results import summarize

logger = logging.getLogger(__name__)
TRIGGERS = ("daily", "manual", "retrain", "catch-up")


class RunInProgressError(Exception):
    """Another run holds the training lock."""

    def __init__(self, run_id: str | None) -> None:
        super().__init__(f"training run {run_id or '(unknown)'} is already running")
        self.run_id = run_id


def new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _holder_run_id(holder: str | None) -> str | None:
    for part in (holder or "").split():
        if part.startswith("run_id="):
            return part.removeprefix("run_id=")
    return None


@dataclass
class Services:
    """The state-holding parts a run writes to, built once from settings."""

    settings: Settings
    store: ModelStore
    history: History
    alerts: Alerts

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        store = ModelStore(settings.MODELS_DIR, versioning=settings.MODEL_VERSIONING,
                           keep_candidates=settings.KEEP_CANDIDATES)
        history = History(settings.history_file,
                          rebuild=lambda: rebuild_history(settings.MODELS_DIR))
        return cls(settings, store, history, Alerts.from_settings(settings, history))


class Runner:
    """Runs training. With `isolated=True`, `run` executes in a child process
    (`python -m backend.ml train`), as `start` always does, so a web server or the
    scheduler thread never shares its interpreter (and GIL) with the heavy work: status
    answers stay fast."""

    def __init__(self, services: Services, *, isolated: bool = False) -> None:
        self.isolated = isolated
        self.services = services
        self.settings = services.settings
        self.lock_path = self.settings.LOGS_DIR / "training.lock"
        self.progress_path = self.settings.LOGS_DIR / "training_progress.json"

    # ---- who is running ---------------------------------------------------------------------

    def current(self) -> dict[str, Any] | None:
        """The running run's progress, from any process; None when no run holds the lock."""
        holder = lock_holder(self.lock_path)
        if holder is None:
            return None
        run_id = _holder_run_id(holder)
        with contextlib.suppress(OSError, ValueError):
            progress: dict[str, Any] = read_json(self.progress_path)
            if progress.get("run_id") == run_id:
                return progress
        return {"run_id": run_id, "holder": holder}

    def recover_interrupted(self) -> list[str]:
        """Mark runs left "running" by a dead process as "interrupted"."""
        current = self.current()
        running_id = current["run_id"] if current else None
        return self.services.history.mark_interrupted(lambda run_id: run_id == running_id)

    # ---- a run ------------------------------------------------------------------------------

    def run(self, *, trigger: str = "manual", models: str | Sequence[str] | None = None,
            options: Mapping[str, trainer.TrainOptions] | None = None, actor: str = "cli",
            run_id: str | None = None,
            on_result: Callable[[trainer.TrainResult], None] | None = None) -> dict[str, Any]:
        """Train, gate and record; the guide's result shape plus `run_id` and decisions.

        Raises RunInProgressError when another run holds the lock (nothing is written).
        """
        if trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}")
        names = specs.parse_names(list(models) if models is not None and not isinstance(
            models, str) else models)
        run_id = run_id or new_run_id()
        if self.isolated:
            child = self._spawn(trigger, names, options or {}, actor, run_id)
            out, err = child.communicate()
            return self._child_summary(child.returncode, out, err)
        try:
            with file_lock(self.lock_path, timeout=0, purpose=f"run_id={run_id} {trigger}"):
                return self._run_locked(run_id, trigger, names, options or {}, actor,
                                        on_result)
        except LockTimeout as exc:
            raise RunInProgressError(_holder_run_id(exc.holder)) from None

    def start(self, **kwargs: Any) -> tuple[str, threading.Thread]:
        """Begin a run in a child process; its id and the thread that reaps the child.

        Returns once the child holds the lock (so an HTTP trigger can answer 202 truthfully)
        and raises RunInProgressError at once when another run holds it.
        """
        if kwargs.get("trigger", "manual") not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}")
        names = specs.parse_names(kwargs.pop("models", None))  # a bad name fails here
        run_id = kwargs.pop("run_id", None) or new_run_id()
        return run_id, self._start_child(run_id, names, **kwargs)

    def _run_locked(self, run_id: str, trigger: str, names: list[str],
                    options: Mapping[str, trainer.TrainOptions], actor: str,
                    on_result: Callable[[trainer.TrainResult], None] | None) -> dict[str, Any]:
        history, settings = self.services.history, self.settings
        history.mark_interrupted(lambda _run_id: False)  # we hold the lock: none can run
        started = time.perf_counter()
        timestamp = datetime.now(UTC).isoformat()
        history.append_training({"run_id": run_id, "timestamp": timestamp, "trigger": trigger,
                                 "status": "running", "actor": actor, "models": names})
        logger.info("training run %s (%s) started: %d models", run_id, trigger, len(names))
        progress: dict[str, Any] = {"run_id": run_id, "trigger": trigger, "started_at": timestamp,
                    "total": len(names), "done": 0, "in_flight": list(names), "finished": []}
        self._write_progress(progress)

        def progress_cb(result: trainer.TrainResult) -> None:
            progress["done"] = int(progress["done"]) + 1
            progress["in_flight"] = [n for n in progress["in_flight"] if n != result.name]
            progress["finished"] = [*progress["finished"], result.name]
            self._write_progress(progress)
            logger.info("run %s: %s %s (%d/%d)", run_id, result.name,
                        f"{result.metric}={result.score:.4f}" if result.ok
                        else f"failed: {result.error}", progress["done"], len(names))
            if on_result is not None:
                on_result(result)

        try:
            chosen = [specs.get_spec(n) for n in names]
            tables = trainer.load_tables(loading.open_readonly(settings.DATABASE_URL), chosen)
            thresholds = {s.name: specs.threshold_for(s, settings.MIN_ACCURACY_THRESHOLD,
                                                      settings.threshold_overrides())
                          for s in chosen}
            with trainer.parallel_backend(settings.TRAINING_BACKEND,
                                          settings.DASK_SCHEDULER_ADDRESS):
                results = trainer.train_many(chosen, tables, thresholds=thresholds,
                                             n_jobs=settings.TRAINING_N_JOBS,
                                             options=options, on_result=progress_cb)
            decisions = self._save_and_promote(run_id, results, tables, actor)
        except Exception as exc:
            duration = round(time.perf_counter() - started, 3)
            message = f"{type(exc).__name__}: {exc}"
            history.update_training(run_id, status="failed", duration_seconds=duration,
                                    models_trained=len(names), successful_models=0,
                                    failed_models=len(names), errors=[message])
            self.services.alerts.notify("error", "training_failed",
                                        f"run {run_id} failed: {message}")
            self.progress_path.unlink(missing_ok=True)
            raise
        summary = summarize(results, timestamp=timestamp,
                            duration_seconds=time.perf_counter() - started)
        for group in summary["model_details"].values():
            for name, detail in group.items():
                detail.update(decisions.get(name, {}))
        summary.update(run_id=run_id, trigger=trigger,
                       promoted=sorted(n for n, d in decisions.items() if d["promoted"]))
        history.update_training(run_id, **{k: v for k, v in summary.items()
                                           if k not in ("run_id", "timestamp", "trigger")})
        self._alert_outcome(run_id, results, summary)
        self.progress_path.unlink(missing_ok=True)
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

    # ---- child processes --------------------------------------------------------------------

    def _spawn(self, trigger: str, names: list[str], options: Mapping[str, trainer.TrainOptions],
               actor: str, run_id: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "backend.ml", "train", "--json", "--trigger", trigger,
                   "--actor", actor, "--run-id", run_id, "--models", ",".join(names)]
        if options:
            command += ["--options", json.dumps({n: asdict(o) for n, o in options.items()})]
        env = {**os.environ, **self.settings.as_environment(),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    @staticmethod
    def _child_error(err: str) -> Exception:
        line = (err.strip().splitlines() or ["training process failed"])[-1]
        line = line.removeprefix("error: ")
        if "is already running" in line:
            return RunInProgressError(line.split("training run ")[-1].split()[0])
        return RuntimeError(line)

    def _child_summary(self, returncode: int, out: str, err: str) -> dict[str, Any]:
        if returncode not in (0, 1):
            raise self._child_error(err)
        summary: dict[str, Any] = json.loads(out)
        return summary

    def _start_child(self, run_id: str, names: list[str], *, trigger: str = "manual",
                     actor: str = "cli", options: Mapping[str, trainer.TrainOptions] | None
                     = None, **_ignored: Any) -> threading.Thread:
        """Spawn the run and return once it holds the lock (or raise why it could not)."""
        child = self._spawn(trigger, names, options or {}, actor, run_id)
        deadline = time.monotonic() + 120
        while _holder_run_id(lock_holder(self.lock_path)) != run_id:
            if child.poll() is not None:
                out, err = child.communicate()
                if child.returncode in (0, 1) or self.services.history.get_training(run_id):
                    break  # it ran (and maybe failed, on record) before we looked
                raise self._child_error(err)
            if time.monotonic() > deadline:
                child.kill()
                raise RuntimeError(f"training process for {run_id} did not start in time")
            time.sleep(0.02)
        reaper = threading.Thread(target=child.communicate, name=f"training-{run_id}",
                                  daemon=True)
        reaper.start()
        return reaper

    def _write_progress(self, progress: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):  # progress is a courtesy, never a reason to fail
            atomic_write_json(self.progress_path, dict(progress), indent=None)

    def _save_and_promote(self, run_id: str, results: Sequence[trainer.TrainResult],
                          tables: Mapping[str, pd.DataFrame],
                          actor: str) -> dict[str, dict[str, Any]]:
        """Save every fit, gate it against production re-scored on the same holdout, back up
        the production set about to be replaced, then move the aliases."""
        store, alerts, settings = self.services.store, self.services.alerts, self.settings
        decisions: dict[str, dict[str, Any]] = {}
        winners: dict[str, tuple[str, str]] = {}
        for result in results:
            if not result.ok:
                continue
            meta = store.save(result, run_id=run_id)
            self.services.history.add_model_version(result.name, {
                k: meta.get(k) for k in ("version", "run_id", "created_at", "metric", "score",
                                         "baseline", "threshold", "passed", "sha256")})
            production_score = self._production_score(result, tables)
            promote, reason = promotion_decision(
                candidate_score=float(result.score or 0.0), candidate_passed=result.passed,
                production_score_on_same_holdout=production_score,
                tolerance=settings.PROMOTION_TOLERANCE, threshold=result.threshold)
            decisions[result.name] = {"version": meta["version"], "promoted": promote,
                                      "decision": reason,
                                      "production_score_on_holdout": production_score}
            if promote:
                winners[result.name] = (meta["version"], reason)
                if production_score is None and not result.passed:
                    alerts.notify("warning", "accuracy_below_threshold",
                                  f"{result.name}'s first version scored {result.score:.4f}, "
                                  f"under its threshold {result.threshold:.2f}; it serves "
                                  "because there is nothing better", model=result.name,
                                  run_id=run_id, score=result.score,
                                  threshold=result.threshold, attempts=1)
            else:
                store.reject(result.name, meta["version"])
        replaced = [n for n in winners if store.aliases(n)["production"] is not None]
        if replaced and settings.BACKUP_MODELS:
            backup_production(settings.MODELS_DIR, settings.LOGS_DIR, replaced,
                              key=settings.BACKUP_ENCRYPTION_KEY)
        for name, (version, reason) in winners.items():
            store.promote(name, version, reason=f"{reason} (run {run_id})", actor=actor)
        if settings.BACKUP_MODELS:
            prune_backups(settings.LOGS_DIR, settings.BACKUP_RETENTION_DAYS)
        return decisions

    def _production_score(self, result: trainer.TrainResult,
                          tables: Mapping[str, pd.DataFrame]) -> float | None:
        """Production's score on the candidate's holdout (not its old number); None if none."""
        served = self.services.store.load_serving(
            result.name, on_alert=self.services.alerts.callback(result.name))
        if served is None:
            return None
        spec = specs.get_spec(result.name)
        labelled, _ = trainer.labelled_frame(spec, tables[spec.table])
        tcol = schema.time_column(spec.table)
        holdout = labelled[labelled[tcol] >= pd.Timestamp(result.holdout_start)]
        try:
            return round(trainer.evaluate(spec, served[0], holdout), 6)
        except Exception as exc:  # production cannot score today's data: the candidate wins
            logger.warning("production %s cannot score the new holdout: %s", result.name, exc)
            return 0.0
