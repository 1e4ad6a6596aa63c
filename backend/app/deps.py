"""Dependencies of the routes: what the lifespan built, the API key, checked parameters.

The lifespan stores settings, services, runner and scheduler on `app.state`; routes take
them through the `Annotated` aliases below, and tests swap any of them with
`app.dependency_overrides`. Overriding `backend.ml.config.get_settings` also changes the
settings the lifespan builds everything from.
"""

from __future__ import annotations

import hmac
import re
import threading
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from cachetools import LRUCache
from fastapi import Depends, HTTPException, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator
from sklearn.pipeline import Pipeline

from backend.app.errors import validation_error
from backend.app.shadow import ShadowScorer
from backend.ml.config import Settings
from backend.ml.fleet import specs
from backend.ml.fleet.specs import MODEL_NAMES, ModelSpec, UnknownModelError
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services

Meta = dict[str, Any]


class Scheduler(Protocol):
    """What the API uses of `backend.ml.scheduler.TrainingScheduler`."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def status(self) -> dict[str, Any]: ...


class EstimatorCache:
    """Verified, unpickled estimators by (model, version), least recently used dropped: at
    most `size` (64) of them, however many versions clients ask for.

    A version's files never change once committed, so a cached estimator stays right; the
    production alias is read on every request, so a promotion or rollback is seen at once.
    `serving` remembers which version answered for a production alias (itself, or the
    fallback `load_serving` chose when it failed verification) so a broken production file
    is not re-read and re-alerted on every request; it is looked at again when the alias
    moves or the process restarts.
    """

    def __init__(self, size: int = 64) -> None:
        self._items: LRUCache[tuple[str, str], tuple[Pipeline, Meta]] = LRUCache(maxsize=size)
        # (model, production version) -> the version serving for it; bounded like the items
        self.serving: LRUCache[tuple[str, str], str] = LRUCache(maxsize=size)
        self._lock = threading.Lock()  # LRUCache is not thread-safe; requests run in threads

    def get(self, name: str, version: str) -> tuple[Pipeline, Meta] | None:
        with self._lock:
            return self._items.get((name, version))

    def put(self, name: str, version: str, item: tuple[Pipeline, Meta]) -> None:
        with self._lock:
            self._items[(name, version)] = item


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_runner(request: Request) -> Runner:
    runner: Runner = request.app.state.runner
    return runner


def get_scheduler(request: Request) -> Scheduler | None:
    scheduler: Scheduler | None = request.app.state.scheduler
    return scheduler


def get_estimators(request: Request) -> EstimatorCache:
    cache: EstimatorCache = request.app.state.estimators
    return cache


def get_shadow(request: Request) -> ShadowScorer | None:
    """The candidate shadow scorer, None unless SHADOW_CANDIDATES is on."""
    scorer: ShadowScorer | None = request.app.state.shadow
    return scorer


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]
RunnerDep = Annotated[Runner, Depends(get_runner)]
SchedulerDep = Annotated[Scheduler | None, Depends(get_scheduler)]
EstimatorsDep = Annotated[EstimatorCache, Depends(get_estimators)]
ShadowDep = Annotated[ShadowScorer | None, Depends(get_shadow)]

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <ML_API_KEY>`; "
                    "required by trigger and rollback when ML_API_KEY is set.")


def require_api_key(
        settings: SettingsDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """401 unless the request bears ML_API_KEY (open when the key is not configured)."""
    key = settings.ML_API_KEY
    if not key:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8")):
        raise HTTPException(401, "missing or wrong API key: send `Authorization: Bearer "
                                 "<ML_API_KEY>`", headers={"WWW-Authenticate": "Bearer"})


# ---- parameters checked against the model registry ----------------------------------------

NAMES_PATTERN = "|".join(MODEL_NAMES)
MODELS_LIST_PATTERN = rf"^ *({NAMES_PATTERN}) *(, *({NAMES_PATTERN}) *)*$"


def model_spec(name: Annotated[str, Path(description="A model name.", max_length=100,
                                          json_schema_extra={"enum": MODEL_NAMES})]
               ) -> ModelSpec:
    """The spec of the model in the path; an unknown name is a 404 listing the valid ones."""
    return specs.get_spec(name)


def model_filter(model: Annotated[str | None, Query(
        description="Only entries about this model.", max_length=100,
        json_schema_extra={"enum": MODEL_NAMES})] = None) -> str | None:
    if model is None:
        return None
    try:
        return specs.get_spec(model).name
    except UnknownModelError as exc:
        raise validation_error(("query", "model"), str(exc)) from None


def model_list(models: Annotated[str | None, Query(
        description=f"Comma-separated model names; default: all {len(MODEL_NAMES)}.",
        max_length=2000,
        json_schema_extra={"pattern": MODELS_LIST_PATTERN})] = None) -> list[str] | None:
    if models is None:
        return None
    if not any(part.strip() for part in models.split(",")):
        raise validation_error(("query", "models"), "names no model; leave it out to train "
                               f"all, or name some of {', '.join(MODEL_NAMES)}")
    try:
        return specs.parse_names(models)
    except UnknownModelError as exc:
        raise validation_error(("query", "models"), str(exc)) from None


ISO_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
                      r"([Zz]|[+-]\d{2}:\d{2})?")


def iso_time(value: object) -> object:
    """An RFC 3339 time as an aware datetime (a missing zone means UTC; a leap second counts
    as :59). Stricter than pydantic, which would also take `0.5` as seconds since 1970; and
    a time that has no UTC equivalent (9999-12-31T23:59-14:00) is refused here rather than
    overflowing later."""
    if value is None or isinstance(value, datetime):
        return value
    match = ISO_TIME.fullmatch(str(value))
    if match is None:
        raise ValueError("must be an ISO 8601 time such as 2026-01-31T02:00:00+05:30 "
                         "(UTC when it names no zone)")
    day, hours, minutes, seconds, fraction, zone = match.groups()
    second = min(int(seconds or 0), 59)
    zone = "+00:00" if zone in ("Z", "z") else zone or "+00:00"
    moment = datetime.fromisoformat(f"{day}T{hours}:{minutes}:{second:02d}."
                                    f"{(fraction or '')[:6].ljust(6, '0')}{zone}")
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range: the time must fall between the years 0001 and "
                         "9999 in UTC") from None
    return moment


def iso_time_with_offset(value: object) -> object:
    """`iso_time`, refusing a time that names no offset: where the answer depends on the
    instant, guessing UTC would answer for the wrong one."""
    match = ISO_TIME.fullmatch(str(value))
    if match is not None and match.group(6) is None:
        raise ValueError("must name its offset, such as 2026-01-31T02:00:00+05:30 or "
                         "2026-01-31T02:00:00Z")
    return iso_time(value)


At = Annotated[datetime, BeforeValidator(iso_time_with_offset), Query(
    description="An ISO 8601 time with its offset (Z or +05:30).")]
Since = Annotated[datetime | None, BeforeValidator(iso_time), Query(
    description="Only entries at or after this ISO 8601 time (UTC when it names no zone).")]
SpecDep = Annotated[ModelSpec, Depends(model_spec)]
ModelFilterDep = Annotated[str | None, Depends(model_filter)]
ModelListDep = Annotated[list[str] | None, Depends(model_list)]
