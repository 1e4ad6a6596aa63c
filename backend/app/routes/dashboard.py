"""The operator dashboard at `/`, and the one data endpoint only its chart needs.

The page is a static skeleton that the scripts in `static/` fill from the JSON API
(status, models, alerts, history; a model's timeline when its card is opened), polling
every 2 s while a run is going and every 15 s otherwise: `dom.js` and `api.js` are shared
helpers, `chart.js` draws the SVG chart, `models.js` the model cards, `dashboard.js` the
rest and the polling loop (loaded in that order; `defer` keeps it). No build step and
nothing fetched from another origin, so it works on a plant network without internet; the
Content-Security-Policy below holds it to that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from backend.app.deps import ServicesDep, SettingsDep, SpecDep
from backend.app.schemas import Aliases, Envelope, EstimatedScore, error_responses
from backend.ml.fleet import specs
from backend.ml.history import parse_timestamp
from backend.ml.runs.services import Services

router = APIRouter()
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Inline scripts and styles are refused, so text from the history (alert messages, reasons)
# can never run as code even if a rendering slip put it into markup.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
ALERT_SCAN = 5_000  # alerts are not indexed by model: look at this many of the newest
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ML training scheduler</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/dashboard.css?v={version}">
<script src="/static/dom.js?v={version}" defer></script>
<script src="/static/api.js?v={version}" defer></script>
<script src="/static/chart.js?v={version}" defer></script>
<script src="/static/models.js?v={version}" defer></script>
<script src="/static/dashboard.js?v={version}" defer></script>
</head>
<body>
<header class="top">
  <div>
    <h1>ML training scheduler</h1>
    <p class="sub">{model_count} logistics models, kept fresh: nightly training, hourly checks</p>
  </div>
  <p class="conn" id="conn" aria-live="polite">connecting&hellip;</p>
</header>
<div id="banner" class="banner" role="alert" hidden></div>
<main class="layout">
  <section class="card training" id="training" aria-labelledby="training-h">
    <div class="card-head">
      <h2 id="training-h">Training</h2>
      <span id="run-state" class="badge">&hellip;</span>
    </div>
    <div class="progress" id="progress" role="progressbar" aria-label="Training progress"
         aria-valuemin="0" aria-valuemax="100" aria-valuenow="0">
      <div class="progress-bar" id="progress-bar"></div>
    </div>
    <p id="progress-text" class="progress-text"></p>
    <dl class="facts" id="facts"></dl>
    <div class="actions">
      <button id="train-now" type="button" class="primary">Train now</button>
      <a class="quiet" href="/api/docs">API docs</a>
    </div>
    <p id="action-message" class="message" aria-live="polite" hidden></p>
  </section>
  <section class="card alerts" aria-labelledby="alerts-h">
    <div class="card-head"><h2 id="alerts-h">Alerts</h2><span id="alert-count"></span></div>
    <ul id="alert-list" class="alert-list"></ul>
  </section>
  <section class="models" aria-labelledby="models-h">
    <div class="section-head">
      <h2 id="models-h">Models</h2>
      <p id="fleet" class="fleet"></p>
      <p class="hint">Open a model for its accuracy over time and rollback.</p>
    </div>
    <div id="groups" class="groups"></div>
  </section>
  <section class="card history" aria-labelledby="history-h">
    <div class="card-head"><h2 id="history-h">Training history</h2></div>
    <div class="table-wrap">
      <table>
        <thead><tr><th scope="col">Time</th><th scope="col">Trigger</th>
          <th scope="col" class="num">Duration</th><th scope="col" class="num">Models</th>
          <th scope="col">Result</th><th scope="col" class="num">Avg accuracy</th></tr></thead>
        <tbody id="history-rows"></tbody>
      </table>
    </div>
    <div class="pager">
      <button id="history-prev" type="button">&larr; Newer</button>
      <span id="history-page"></span>
      <button id="history-next" type="button">Older &rarr;</button>
    </div>
  </section>
</main>
<dialog id="key-dialog" aria-labelledby="key-h">
  <form id="key-form" method="dialog">
    <h2 id="key-h">API key needed</h2>
    <p id="key-why">This service requires its API key (ML_API_KEY) to train or roll back.
      It is kept in this browser tab only.</p>
    <label for="key-input">API key</label>
    <input id="key-input" type="password" autocomplete="off" required>
    <div class="actions">
      <button type="submit" class="primary" value="ok">Use key</button>
      <button type="button" id="key-cancel">Cancel</button>
    </div>
  </form>
</dialog>
<noscript>This dashboard needs JavaScript. The API is documented at /api/docs.</noscript>
</body>
</html>
"""


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
def dashboard(request: Request) -> HTMLResponse:
    """The page; the version in the asset URLs makes a browser fetch new ones after an
    upgrade instead of mixing a cached script with a new API."""
    page = PAGE.replace("{version}", request.app.version).replace(
        "{model_count}", str(len(specs.MODEL_NAMES)))
    return HTMLResponse(page, headers={
        "Content-Security-Policy": CSP, "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


# ---- a model's timeline --------------------------------------------------------------------
# Its shapes live here, beside the one route that answers with them.


class TimelinePoint(BaseModel):
    time: str
    score: float
    kind: Literal["training", "live"] = Field(description="`training`: a version's score on "
                                                          "its holdout; `live`: a check's "
                                                          "score on fresh data.")
    version: str | None


class TimelineEvent(BaseModel):
    time: str
    kind: Literal["retrain", "promotion", "rollback", "alert"]
    detail: str
    version: str | None = Field(None, description="The version it concerns, when one does.")


class TimelineEstimate(EstimatedScore):
    """A check's estimate, and once its labels arrived the realized score beside it."""

    time: str = Field(description="When the check estimated it.")
    version: str | None
    realized_value: float | None = Field(None, description="The score once the labels "
                                                           "arrived (null: not yet).")
    estimation_error: float | None = Field(None, description="estimated minus realized.")


class Timeline(BaseModel):
    model: str
    metric: str
    threshold: float
    aliases: Aliases
    points: list[TimelinePoint] = Field(description="Oldest first.")
    events: list[TimelineEvent] = Field(description="Oldest first.")
    estimates: list[TimelineEstimate] = Field(default_factory=list, description=(
        "Oldest first; never among `points`: an estimate is not a score."))



def newest(items: Iterable[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Oldest first, the newest `limit`; an item whose time does not parse is left out."""
    timed = [(moment, item) for item in items
             if (moment := parse_timestamp(item.get("time"))) is not None]
    timed.sort(key=lambda pair: pair[0])
    return [item for _, item in timed[-limit:]]


def training_points(services: Services, name: str) -> list[dict[str, Any]]:
    """Every version's holdout score: the history's record (which keeps rejected candidates
    the store has since pruned) completed by the store (versions the history archived)."""
    found: dict[str, Mapping[str, Any]] = {}
    for meta in services.store.versions(name):
        found[str(meta.get("version"))] = meta
    for entry in services.history.model_versions(name):
        found.setdefault(str(entry.get("version")), entry)
    return [{"time": meta.get("created_at") or meta.get("timestamp"), "score": meta["score"],
             "kind": "training", "version": version}
            for version, meta in found.items() if isinstance(meta.get("score"), int | float)]


def live_points(services: Services, name: str, limit: int) -> list[dict[str, Any]]:
    points = []
    for check in services.history.checks(limit=limit, model=name):
        entry = (check.get("models") or {}).get(name)
        if isinstance(entry, dict) and isinstance(entry.get("live_score"), int | float):
            points.append({"time": check.get("timestamp"), "score": entry["live_score"],
                           "kind": "live", "version": entry.get("version")})
    return points


ESTIMATED_KEYS = ("estimated_value", "estimated_low", "estimated_high", "estimate_method",
                  "estimated_rows")


def estimate_points(services: Services, name: str, limit: int) -> list[dict[str, Any]]:
    """Each check's estimate on rows whose labels were pending, with the realized score a
    later check recorded beside it (linked by the estimate's check id)."""
    found: dict[str, dict[str, Any]] = {}
    realized: list[dict[str, Any]] = []
    for check in services.history.checks(limit=limit, model=name):
        entry = (check.get("models") or {}).get(name)
        if not isinstance(entry, dict):
            continue
        realized += [r for r in entry.get("realized") or () if isinstance(r, dict)]
        if isinstance(entry.get("estimated_value"), int | float):
            found[str(check.get("check_id"))] = {
                "time": check.get("timestamp"), "version": entry.get("version"),
                **{k: entry.get(k) for k in ESTIMATED_KEYS}}
    for record in realized:  # an estimate older than the checks read comes from its record
        point = found.setdefault(str(record.get("estimate_check_id")), {
            "time": record.get("estimated_at"), "version": record.get("version"),
            **{k: record.get(k) for k in ESTIMATED_KEYS}})
        point.update(realized_value=record.get("realized_value"),
                     estimation_error=record.get("estimation_error"))
    return list(found.values())


def alias_events(services: Services, name: str, limit: int) -> list[dict[str, Any]]:
    """Promotions and rollbacks from the registry audit; a restore of a backup set puts an
    older version back, so it shows as a rollback."""
    events = []
    for entry in services.store.audit(limit, name=name):
        kind = "rollback" if entry.get("action") in ("rollback", "restore") else "promotion"
        events.append({"time": entry.get("at"), "kind": kind, "version": entry.get("to"),
                       "detail": f"{entry.get('from') or 'none'} -> {entry.get('to')} by "
                                 f"{entry.get('actor')}: {entry.get('reason')}"})
    return events


def retrain_events(services: Services, name: str, limit: int) -> list[dict[str, Any]]:
    """Runs the check started because the model fell below its threshold."""
    events = []
    for run in services.history.trainings(limit, model=name):
        if run.get("trigger") != "retrain":
            continue
        groups = (run.get("model_details") or {}).values()
        detail: dict[str, Any] = next((g[name] for g in groups if isinstance(g, dict)
                                       and isinstance(g.get(name), dict)), {})
        score = detail.get("score")
        scored = f"score {score:.4f}" if isinstance(score, int | float) else "no score"
        # the gate's decision already names the score; a failed fit has no decision
        outcome = (f"{scored}, promoted" if detail.get("promoted") else
                   str(detail.get("decision") or f"{scored}, {run.get('status')}"))
        events.append({"time": run.get("timestamp"), "kind": "retrain",
                       "version": detail.get("version"),
                       "detail": f"run {run.get('run_id')}: {outcome}"})
    return events


def alert_events(services: Services, name: str, limit: int) -> list[dict[str, Any]]:
    alerts = [a for a in services.history.alerts(ALERT_SCAN) if a.get("model") == name]
    return [{"time": a.get("timestamp"), "kind": "alert", "version": a.get("version"),
             "detail": f"{a.get('level')} {a.get('kind')}: {a.get('message')}"}
            for a in alerts[:limit]]


@router.get("/ml/models/{name}/timeline", tags=["models"], response_model=Envelope[Timeline],
            responses=error_responses(404, 422))
def model_timeline(
        spec: SpecDep, settings: SettingsDep, services: ServicesDep,
        limit: Annotated[int, Query(ge=1, le=1000, description=(
            "At most this many of each: training points, live points, events (the newest)."
        ))] = 200) -> Envelope[Timeline]:
    """A model's accuracy over time, for a chart: each version's score on its holdout and
    each check's live score (`points`), and what happened to it (`events`: retrains,
    promotions, rollbacks, alerts). Both oldest first; a model never trained has none.
    `estimates`: scores estimated while labels were pending, each with the realized score
    once they arrived (never among `points`)."""
    name = spec.name
    events = [*alias_events(services, name, limit), *retrain_events(services, name, limit),
              *alert_events(services, name, limit)]
    return Envelope(data=Timeline.model_validate({
        "model": name, "metric": spec.metric, "threshold": settings.threshold_for(spec),
        "aliases": services.store.aliases(name),
        "points": newest([*newest(training_points(services, name), limit),
                          *newest(live_points(services, name, limit), limit)], 2 * limit),
        "events": newest(events, limit),
        "estimates": newest(estimate_points(services, name, limit), limit)}))
