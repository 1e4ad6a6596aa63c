"""Training runs: status, trigger, one run, the history (the guide's three endpoints, plus)."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from backend.app.deps import (
    ModelFilterDep,
    ModelListDep,
    RunnerDep,
    Scheduler,
    SchedulerDep,
    ServicesDep,
    SettingsDep,
    Since,
    require_api_key,
)
from backend.app.errors import error_response, storage_failure
from backend.app.schemas import (
    Envelope,
    HistoryData,
    RunDetail,
    RunSummary,
    StatusData,
    TrainingStatus,
    TriggerAccepted,
    error_responses,
)
from backend.ml.config import Settings
from backend.ml.fsio import lock_holder
from backend.ml.runs.progress import RunInProgressError
from backend.ml.runs.scheduler import LEASE_FILE

logger = logging.getLogger("backend.app")
router = APIRouter(prefix="/ml/training", tags=["training"])
MAX_OFFSET = 1_000_000  # decades of runs; a larger offset is a mistake, not a page


def scheduler_view(scheduler: Scheduler | None, settings: Settings) -> dict[str, Any]:
    """The scheduler's own status, or what can be said without one in this process."""
    if scheduler is not None:
        return scheduler.status()
    holder = None
    with contextlib.suppress(OSError):  # another replica's lease, if any
        holder = lock_holder(settings.LOGS_DIR / LEASE_FILE)
    return {"scheduler_active": False, "enabled": False, "lease_holder": holder,
            "training_time": settings.DAILY_TRAINING_TIME,
            "timezone": settings.TRAINING_TIMEZONE, "next_run": None, "next_check": None,
            "last_check": None}


@router.get("/status", response_model=Envelope[StatusData])
def training_status(settings: SettingsDep, services: ServicesDep, runner: RunnerDep,
                    scheduler: SchedulerDep) -> Envelope[StatusData]:
    """The guide's status, plus the running run's progress, the lease holder and the next
    daily run and check."""
    view = scheduler_view(scheduler, settings)
    stats = services.history.stats()
    progress = runner.current()
    checks = services.history.checks(limit=1)
    last_check = checks[0].get("timestamp") if checks else view.get("last_check")
    return Envelope(data=StatusData.model_validate({
        "scheduler_active": bool(view.get("scheduler_active")),
        "scheduler_enabled": settings.SCHEDULER_ENABLED,
        "training_time": view.get("training_time") or settings.DAILY_TRAINING_TIME,
        "timezone": view.get("timezone") or settings.TRAINING_TIMEZONE,
        "trainer_status": {"is_training": progress is not None,
                           "last_training_time": stats.get("last_training"), "stats": stats},
        "next_run": view.get("next_run"), "next_check": view.get("next_check"),
        "last_check": last_check, "lease_holder": view.get("lease_holder"),
        "progress": progress, "api_key_required": bool(settings.ML_API_KEY),
        "served_by": os.getpid()}))


@router.post(
    "/trigger", status_code=202, response_model=Envelope[TriggerAccepted | RunSummary],
    dependencies=[Depends(require_api_key)],
    responses={200: {"model": Envelope[RunSummary],
                     "description": "`wait=true`: the finished run, in the guide's shape."},
               202: {"description": "The run started; follow `Location`.",
                     "headers": {"Location": {"description": "/ml/training/runs/{run_id}",
                                              "schema": {"type": "string"}}}},
               **error_responses(401, 409, 422, 500)})
async def trigger_training(
        request: Request, response: Response, runner: RunnerDep, models: ModelListDep,
        wait: Annotated[bool, Query(description="Answer when the run has finished.")] = False,
) -> Any:
    """Start a manual run of `models` (default all). 202 with its id once it holds the lock
    and is on record (a worker process trains it), or with `wait=true` the guide's result
    when it ends; 409 at once naming the run already running (`run_id`, `trigger`,
    `started_at`)."""
    try:
        # Here, not in a thread: taking (or being refused) the lock is a few system calls,
        # so a refusal costs no thread hop and is answered at once.
        lock = runner.take_lock("manual")
    except RunInProgressError as exc:
        return error_response(409, str(exc), run_id=exc.run_id, trigger=exc.trigger,
                              started_at=exc.started_at)
    run_id = lock.run_id
    try:
        if wait:
            summary = await run_in_threadpool(runner.run, trigger="manual", models=models,
                                              actor="api", lock=lock)
            response.status_code = 200
            return Envelope(data=RunSummary.model_validate(summary))
        await run_in_threadpool(runner.start, trigger="manual", models=models, actor="api",
                                lock=lock)
    except Exception as exc:
        if storage_failure(exc) is not None:
            raise  # a full or read-only disk: 503 naming the path, as on every route
        # on record as failed and alerted (by the worker, or by the runner when the worker
        # died or could not start); the client gets the reason
        logger.exception("training run %s failed", run_id)
        return error_response(500, f"training run {run_id} failed: {type(exc).__name__}: "
                                   f"{exc}", run_id=run_id)
    response.headers["Location"] = request.app.url_path_for("get_run", run_id=run_id)
    return Envelope(data=TriggerAccepted(run_id=run_id))


@router.get("/runs/{run_id}", name="get_run", response_model=Envelope[RunDetail],
            responses=error_responses(404, 422))
def get_run(run_id: Annotated[str, Path(max_length=100)], services: ServicesDep,
            runner: RunnerDep) -> Envelope[RunDetail]:
    """One run as recorded; a running one also has its live `progress` (models done of
    total, in flight)."""
    current = runner.current()
    live = current if current is not None and current.get("run_id") == run_id else None
    record = services.history.get_training(run_id)
    if record is None and live is None:
        raise HTTPException(404, f"no training run {run_id!r} in the history (archives "
                                 "included); see GET /ml/training/history")
    if record is None:  # it holds the lock but has not written its first record yet
        assert live is not None
        record = {"run_id": run_id, "status": "running", "timestamp": live.get("started_at")}
    if record.get("status") != "running":
        live = None  # finished: only its lock is still being let go
    return Envelope(data=RunDetail.model_validate({**record, "progress": live}))


@router.get("/history", response_model=Envelope[HistoryData],
            responses=error_responses(422))
def training_history(
        services: ServicesDep, model: ModelFilterDep,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        status: Annotated[TrainingStatus | None, Query()] = None,
        since: Since = None,
        archived: Annotated[bool, Query(description="Page on into the yearly archives.")]
        = False) -> Envelope[HistoryData]:
    """The guide's `{history: {trainings, model_versions}, stats}`, newest run first."""
    history = services.history
    trainings = history.trainings(limit, offset, status=status, model=model, since=since,
                                  archived=archived)
    versions = history.model_versions()
    if model is not None:
        versions = {model: versions.get(model, [])}
    return Envelope(data=HistoryData.model_validate({
        "history": {"trainings": trainings, "model_versions": versions},
        "stats": history.stats(),
        "page": {"limit": limit, "offset": offset, "count": len(trainings)}}))
