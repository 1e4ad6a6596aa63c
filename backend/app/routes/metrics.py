"""Prometheus scrape endpoint (no API key, like /health: it changes nothing and holds no
secrets). Left out of the OpenAPI document: its body is the Prometheus text format, not
the JSON envelope every documented endpoint answers with."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from backend.app.deps import RunnerDep, SchedulerDep, ServicesDep, SettingsDep, ShadowDep
from backend.app.prometheus import FleetCollector, exposition

router = APIRouter(tags=["system"])


@router.get("/metrics", include_in_schema=False)
def metrics(settings: SettingsDep, services: ServicesDep, runner: RunnerDep,
            scheduler: SchedulerDep, shadow: ShadowDep) -> Response:
    """The `ml_*` metrics, read from disk now (see `backend.app.prometheus`)."""
    body = exposition(FleetCollector(settings, services, runner, scheduler, shadow))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
