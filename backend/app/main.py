"""The FastAPI application: HTTP only; the ML core lives in `backend.ml`.

`uvicorn backend.app.main:app` runs it. Nothing happens at import: the lifespan reads the
settings (a bad value stops start-up with a message naming the variable), configures the
log, builds the services and runner, marks runs a dead process left "running" as
interrupted, and starts the scheduler thread unless SCHEDULER_ENABLED=false. It neither
trains nor loads tables, so start-up takes well under a second with an existing database.
Training runs and the periodic check each run in a worker process: this process never
fits or scores a model for them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from backend.app import errors, guards
from backend.app.deps import EstimatorCache, Scheduler
from backend.app.routes import api_router
from backend.app.routes.dashboard import STATIC_DIR
from backend.app.schemas import error_responses
from backend.app.shadow import start_shadow, stop_shadow
from backend.ml.config import Settings, describe_invalid, get_settings
from backend.ml.data.loading import describe_url
from backend.ml.fleet.specs import SPECS
from backend.ml.logsetup import configure_logging
from backend.ml.registry.store import StoreError
from backend.ml.registry.verify import check_audit_chain
from backend.ml.runs.runner import Runner
from backend.ml.runs.scheduler import TrainingScheduler
from backend.ml.runs.services import Services
from backend.ml.runs.worker import ChildCheck

logger = logging.getLogger("backend.app")
VERSION = "0.1.0"


def load_settings(app: FastAPI) -> Settings:
    """The settings (`get_settings`, or its override); RuntimeError naming each bad variable."""
    factory = app.dependency_overrides.get(get_settings, get_settings)
    try:
        settings: Settings = factory()
    except ValidationError as exc:
        raise RuntimeError(describe_invalid(exc)) from None
    return settings


def no_delay_on_inherited_listeners() -> None:
    """Turn Nagle's algorithm off on the TCP listening sockets this process inherited.

    `uvicorn --workers N` (0.54) hands each worker a listening socket made without
    IPPROTO_TCP, so asyncio leaves TCP_NODELAY off on the connections it accepts, and every
    answer on a kept-alive connection then waits about 40 ms for the client's delayed ACK
    (uvicorn issue #3149; a 409 took 44 ms instead of 2). On Linux an accepted socket
    inherits TCP_NODELAY from its listener. A single uvicorn process makes its listener
    after the lifespan, with the option set: nothing here then.
    """
    with contextlib.suppress(OSError):
        names = os.listdir("/proc/self/fd")
        for name in names:
            try:
                fd = os.dup(int(name))
            except (OSError, ValueError):
                continue  # closed meanwhile (the listing's own descriptor)
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)  # not a socket
                continue
            with sock, contextlib.suppress(OSError):
                if (sock.family in (socket.AF_INET, socket.AF_INET6)
                        and sock.type == socket.SOCK_STREAM
                        and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def start_scheduler(runner: Runner) -> Scheduler:
    """The scheduler thread (or its standby loop, when another process holds the lease),
    with the periodic check run in a worker process; stopping the scheduler ends a check
    still running."""
    scheduler: Scheduler = TrainingScheduler(runner, check=ChildCheck(runner.settings))
    scheduler.start()
    return scheduler


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        settings = load_settings(app)
    except RuntimeError as exc:
        logger.critical("%s", exc)
        raise
    log_file = configure_logging(settings.LOGS_DIR)
    no_delay_on_inherited_listeners()
    services = Services.from_settings(settings)
    services.check_state_files()  # damage is recovered and alerted now, not mid-request
    try:  # the key is made on the first start (and its path logged), not at the first save
        signer = services.store.signer
    except StoreError as exc:
        logger.critical("%s", exc)
        raise
    logger.info("model versions are signed and checked with key %s (%s)", signer.key_id,
                signer.source)
    check_audit_chain(services.store, services.alerts.notify)  # alerts; serving goes on
    runner = Runner(services, isolated=True)  # training never shares our GIL
    interrupted = runner.recover_interrupted()
    if interrupted:
        logger.warning("marked %d run(s) interrupted: %s", len(interrupted),
                       ", ".join(interrupted))
    if not settings.ML_API_KEY:
        logger.warning("ML_API_KEY is not set: trigger and rollback are open to anyone who "
                       "can reach this service")
    scheduler = start_scheduler(runner) if settings.SCHEDULER_ENABLED else None
    app.state.settings = settings
    app.state.services = services
    app.state.runner = runner
    app.state.scheduler = scheduler
    app.state.estimators = EstimatorCache()
    app.state.shadow = start_shadow(settings, services)  # a scoring thread, or None
    logger.info("API ready: models %s, logs %s (%s), database %s, scheduler %s",
                settings.MODELS_DIR, settings.LOGS_DIR, log_file.name,
                describe_url(settings.DATABASE_URL),
                "started" if scheduler is not None else "disabled (SCHEDULER_ENABLED=false)")
    try:
        yield
    finally:
        if scheduler is not None:
            await to_thread.run_sync(scheduler.stop)
        await to_thread.run_sync(stop_shadow, app.state.shadow)
        runner.close()  # its spare worker; a run in progress goes on
        current = runner.current()
        if current is not None:
            logger.warning("shutting down while run %s is running in this or another "
                           "process; if it is ours it will show as interrupted",
                           current.get("run_id"))
        logger.info("API stopped")


def create_app() -> FastAPI:
    """A new application (tests build one each, with their own overrides)."""
    responses: dict[int | str, dict[str, Any]] = error_responses(500)
    app = FastAPI(title="ML Automated Training Scheduler", version=VERSION,
                  description=f"Keeps {len(SPECS)} logistics models fresh: nightly "
                              "training, hourly "
                              "checks, versions, rollback. Every answer is an envelope: "
                              '`{"status": "success", "data": ...}` or `{"status": "error", '
                              '"error": {"code", "message"}}`.',
                  docs_url="/api/docs", redoc_url=None, lifespan=lifespan, responses=responses)
    app.add_middleware(guards.RequestGuard)  # inside errors' catch-all, before any route
    guards.document(app)
    errors.install(app)
    app.include_router(api_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")  # the dashboard's
    return app


app = create_app()
