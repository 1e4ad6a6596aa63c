"""The 17 models: what serves, its versions, rollback, and predictions.

(A model's timeline, which only the dashboard's chart needs, is in `dashboard.py`.)
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi.exceptions import RequestValidationError
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from backend.app.deps import (
    At,
    EstimatorCache,
    EstimatorsDep,
    ServicesDep,
    SettingsDep,
    ShadowDep,
    SpecDep,
    require_api_key,
)
from backend.app.errors import validation_error
from backend.app.schemas import (
    Envelope,
    ModelDetail,
    ModelList,
    PredictData,
    PredictRequest,
    ProductionAt,
    RollbackData,
    RollbackRequest,
    VersionList,
    error_responses,
)
from backend.ml.fleet.specs import ModelSpec
from backend.ml.monitoring.health import newest_check, read_fleet
from backend.ml.registry.store import NoProductionModelError, StoreError, UnknownVersionError
from backend.ml.runs.services import Services
from backend.ml.training import trainer

router = APIRouter(prefix="/ml/models", tags=["models"])
BULKY = ("feature_stats", "performance_estimator")
MAX_FIELD_ERRORS = 20


def slim(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if meta is None else {k: v for k, v in meta.items() if k not in BULKY}


@router.get("", response_model=Envelope[ModelList])
def list_models(settings: SettingsDep, services: ServicesDep) -> Envelope[ModelList]:
    """All 17: what serves, how it scored at training and in the newest live check, and
    its `state` (see ModelSummary)."""
    rows = []
    for status in read_fleet(services.store, settings, on_recover=services.report_recovery):
        meta = status.production or {}
        rows.append({
            "name": status.name, "group": status.group, "task": status.task,
            "metric": status.metric, "threshold": status.threshold,
            "production_version": meta.get("version"), "score": meta.get("score"),
            "baseline": meta.get("baseline"), "passed": meta.get("passed"),
            "trained_at": meta.get("created_at"),
            "last_check": newest_check(services.history, status.name), "error": status.error,
            "state": status.health.state.value, "state_reason": status.health.reason,
            **status.estimated_fields()})
    return Envelope(data=ModelList.model_validate({"models": rows}))


@router.get("/{name}", response_model=Envelope[ModelDetail],
            responses=error_responses(404, 422))
def model_detail(spec: SpecDep, settings: SettingsDep,
                 services: ServicesDep) -> Envelope[ModelDetail]:
    """Production metadata (without feature statistics), threshold, aliases, the features a
    prediction needs, and the newest live check with its drift."""
    aliases = services.store.aliases(spec.name)
    production, error = None, None
    try:
        production = slim(services.store.production_meta(spec.name))
    except StoreError as exc:
        error = str(exc)
    categorical = set(spec.categorical)
    return Envelope(data=ModelDetail.model_validate({
        "name": spec.name, "group": spec.group, "task": spec.task, "metric": spec.metric,
        "description": spec.description, "threshold": settings.threshold_for(spec),
        "features": [{"name": f, "kind": "categorical" if f in categorical else "numeric"}
                     for f in spec.features],
        "aliases": aliases, "production": production,
        "last_check": newest_check(services.history, spec.name), "error": error}))


@router.get("/{name}/versions", response_model=Envelope[VersionList],
            responses=error_responses(404, 422))
def model_versions(spec: SpecDep, services: ServicesDep) -> Envelope[VersionList]:
    """Every stored version, newest first, with its state (production, previous,
    candidate)."""
    versions = [slim(v) for v in services.store.versions(spec.name)]
    return Envelope(data=VersionList.model_validate({
        "model": spec.name, "aliases": services.store.aliases(spec.name),
        "versions": versions}))


@router.get("/{name}/production", response_model=Envelope[ProductionAt],
            responses=error_responses(404, 422))
def production_at(spec: SpecDep, services: ServicesDep, at: At) -> Envelope[ProductionAt]:
    """Which version served at `at` (an ISO 8601 time with its offset), from the audit of
    alias moves; 404 before the model's first promotion."""
    move = services.store.production_at(spec.name, at)
    if move is None:
        raise HTTPException(404, f"{spec.name} had no production version at "
                                 f"{at.isoformat()}: that is before its first promotion")
    return Envelope(data=ProductionAt.model_validate({
        "model": spec.name, "at": at.isoformat(), "version": move["to"], "since": move["at"],
        "move": move}))


@router.post("/{name}/rollback", response_model=Envelope[RollbackData],
             dependencies=[Depends(require_api_key)],
             responses=error_responses(401, 404, 409, 422))
def rollback(spec: SpecDep, services: ServicesDep,
             body: Annotated[RollbackRequest | None, Body()] = None) -> Envelope[RollbackData]:
    """Serve the previous version again (or `version`); recorded in the audit as actor
    "api". Refused, changing nothing, for an unknown version, one failing its checksum, or
    when there is nothing to roll back to."""
    store = services.store
    body = body or RollbackRequest()
    aliases = store.aliases(spec.name)
    target = body.version or aliases["previous"]
    committed = store.committed(spec.name)
    if target is None:
        raise HTTPException(409, f"{spec.name} has no previous version to roll back to; "
                                 f"name one of {committed or 'none (never trained)'}")
    if target not in committed:
        raise UnknownVersionError(f"{spec.name} has no version {target}; versions are "
                                  f"{', '.join(committed) or 'none (never trained)'}")
    if target == aliases["production"]:
        raise HTTPException(409, f"{spec.name} {target} is already production; nothing changed")
    entry = store.rollback(spec.name, to=target, actor="api", reason=body.reason)
    return Envelope(data=RollbackData.model_validate({
        "model": spec.name, "aliases": store.aliases(spec.name), "audit": entry}))


def serving(services: Services, cache: EstimatorCache, name: str,
            version: str | None) -> tuple[Pipeline, dict[str, Any]]:
    """The estimator for `version`, or production through `load_serving` (its verified
    fallback and one alert when production fails its checksum); cached per version."""
    store = services.store
    if version is not None:
        found = cache.get(name, version)
        if found is None:
            committed = store.committed(name)
            if version not in committed:  # answered from the listing, nothing is loaded
                raise UnknownVersionError(f"{name} has no version {version}; versions are "
                                          f"{', '.join(committed) or 'none (never trained)'}")
            estimator, meta = store.load(name, version)
            found = estimator, {**(slim(meta) or {}), "served_as": "requested"}
            cache.put(name, version, found)
        return found[0], {**found[1], "served_as": "requested"}
    production = store.aliases(name)["production"]
    if production is None:
        raise NoProductionModelError(f"{name} has no production version yet: train it first "
                                     "(POST /ml/training/trigger?models=" + name + ")")
    served = cache.serving.get((name, production))
    found = cache.get(name, served) if served else None
    if found is None:
        loaded = store.load_serving(name, on_alert=services.alerts.callback(name))
        if loaded is None:
            raise HTTPException(503, f"{name}: no stored version verifies; nothing can be "
                                     "served until it is retrained")
        found = loaded[0], slim(loaded[1]) or {}
        cache.put(name, str(found[1]["version"]), found)
        cache.serving[(name, production)] = str(found[1]["version"])
    return found


def json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def finite(value: int | float) -> bool:
    """A number a float can hold (an integer of 400 digits cannot)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def feature_frame(spec: ModelSpec, records: list[dict[str, Any]]) -> pd.DataFrame:
    """The records as the model's input columns; 422 naming each record and field at fault."""
    categorical = set(spec.categorical)
    errors: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        for feature in spec.features:
            if len(errors) >= MAX_FIELD_ERRORS:
                break
            if feature not in record:
                problem = "is missing"
            else:
                value = record[feature]
                if value is None:
                    continue
                if feature in categorical:
                    if isinstance(value, str):
                        continue
                    problem = f"must be a string (categorical) or null, not {json_type(value)}"
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    if finite(value):
                        continue
                    problem = ("must be a finite number (at most about 1.8e308 in size) or "
                               "null")
                else:
                    problem = f"must be a number or null, not {json_type(value)}"
            errors.append({"loc": ("body", "records", i, feature), "msg": problem,
                           "type": "value_error"})
    if errors:
        raise RequestValidationError(errors)
    frame = pd.DataFrame.from_records(
        [{f: r[f] if f in categorical or r[f] is None else float(r[f]) for f in spec.features}
         for r in records], columns=list(spec.features))
    for feature in spec.features:
        column = frame[feature]
        frame[feature] = (column.astype(object).where(column.notna(), np.nan)
                          if feature in categorical else pd.to_numeric(column).astype(float))
    return frame


@router.post("/{name}/predict", response_model=Envelope[PredictData],
             responses=error_responses(404, 409, 422, 503))
def predict(spec: SpecDep, services: ServicesDep, cache: EstimatorsDep, settings: SettingsDep,
            shadow: ShadowDep, body: PredictRequest) -> Envelope[PredictData]:
    """Predictions for up to MAX_PREDICT_RECORDS (default 10,000) records: labels
    (classifiers), values (regressors) or anomaly scores, higher meaning odder
    (anomaly_detection); and the version that made them. `version` must be one the store
    keeps (GET /ml/models/{name}/versions)."""
    limit = settings.MAX_PREDICT_RECORDS
    if len(body.records) > limit:
        raise validation_error(("body", "records"), f"holds {len(body.records)} records; at "
                               f"most {limit} per request (MAX_PREDICT_RECORDS): send them "
                               "in several requests")
    frame = feature_frame(spec, body.records)
    estimator, meta = serving(services, cache, spec.name, body.version)
    # One OpenMP thread per request: requests already run in parallel threads, and a model
    # using every core from each of them (or next to a training run) oversubscribes the CPU;
    # measured here 0.3 s single-threaded vs 1-12 s with a team of 2 for 10,000 rows.
    with threadpool_limits(limits=1, user_api="openmp"):
        values = trainer.decision_values(spec, estimator, frame)
    if shadow is not None and meta["served_as"] == "production":  # never waits (shadow.py)
        shadow.offer(spec, frame, values, estimator, str(meta["version"]))
    output = ("anomaly_score" if spec.task == "anomaly"
              else "value" if spec.task == "regression" else "label")
    return Envelope(data=PredictData(
        model=spec.name, version=str(meta["version"]), served_as=str(meta["served_as"]),
        output=output, count=len(values), predictions=values.tolist()))
