"""Alerts and health."""

from __future__ import annotations

import time
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request

from backend.app.deps import ServicesDep, SettingsDep, Since
from backend.app.schemas import AlertList, Envelope, HealthData, error_responses
from backend.ml.data import loading

router = APIRouter(tags=["system"])
HEALTH_TTL_SECONDS = 10.0


@router.get("/ml/alerts", response_model=Envelope[AlertList], responses=error_responses(422))
def list_alerts(
        services: ServicesDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
        since: Since = None) -> Envelope[AlertList]:
    """Alerts, newest first."""
    alerts = services.history.alerts(limit, offset, since=since)
    return Envelope(data=AlertList.model_validate({
        "alerts": alerts, "page": {"limit": limit, "offset": offset, "count": len(alerts)}}))


def probe_database(url: str) -> dict[str, Any]:
    """Can the business database be opened and asked `SELECT 1`? (read-only, 5 s timeout)"""
    shown = loading.describe_url(url)
    try:
        engine = loading.open_readonly(url)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return {"reachable": False, "url": shown, "error": f"{type(exc).__name__}: {reason}"}
    return {"reachable": True, "url": shown, "error": None}


@router.get("/health", response_model=Envelope[HealthData])
def health(request: Request, settings: SettingsDep) -> Envelope[HealthData]:
    """Liveness, the version, and whether the database answers (probed at most every 10 s,
    so a load balancer polling this costs nothing)."""
    state = request.app.state
    cached: tuple[float, dict[str, Any]] | None = getattr(state, "database_probe", None)
    if cached is None or time.monotonic() - cached[0] > HEALTH_TTL_SECONDS:
        cached = (time.monotonic(), probe_database(settings.DATABASE_URL))
        state.database_probe = cached
    database = cached[1]
    return Envelope(data=HealthData.model_validate({
        "status": "ok" if database["reachable"] else "degraded",
        "version": request.app.version, "database": database}))
