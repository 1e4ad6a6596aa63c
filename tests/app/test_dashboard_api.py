"""The dashboard's page and assets, the `state` of each model in GET /ml/models, and a
model's timeline."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.app.routes.dashboard import STATIC_DIR
from backend.ml.config import Settings
from backend.ml.fleet.specs import MODEL_NAMES
from backend.ml.fsio import atomic_write_json, file_lock
from backend.ml.monitoring.state import STATE_FILE
from backend.ml.runs.services import Services
from tests.app.conftest import CHECK, TRAINED, ClientFactory, app_settings, error, ok

ROLLBACK = "supplier_performance"  # trained twice: v0002 production, v0001 previous
SCRIPTS = ("dom.js", "api.js", "chart.js", "models.js", "dashboard.js")
ASSET = re.compile(r'(?:src|href)="(/static/[^"?]+)(?:\?v=[^"]*)?"')


def states(client: TestClient) -> dict[str, str]:
    return {m["name"]: m["state"] for m in ok(client.get("/ml/models"))["models"]}


def history(settings: Settings) -> Any:
    return Services.from_settings(settings).history


def check_of(name: str, verdict: str, version: str, when: str) -> dict[str, Any]:
    return {"check_id": f"check-{verdict}-{name}", "timestamp": when,
            "models": {name: {"version": version, "threshold": 0.62, "samples": 200,
                              "live_score": 0.5, "verdict": verdict}}}


# ---- the page ---------------------------------------------------------------------------


def test_page_is_html_that_loads_only_its_own_assets(shared_client: TestClient) -> None:
    response = shared_client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assets = ASSET.findall(response.text)
    assert set(assets) == {f"/static/{name}" for name in SCRIPTS} | {
        "/static/dashboard.css", "/static/favicon.svg"}
    assert (STATIC_DIR / "favicon.svg").exists()
    assert "http://" not in response.text and "https://" not in response.text  # no CDN
    assert "/" not in shared_client.app.openapi()["paths"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("path", "kind"), [
    *((f"/static/{name}", "javascript") for name in SCRIPTS),
    ("/static/dashboard.css", "text/css"), ("/static/favicon.svg", "image/svg+xml")])
def test_static_files_are_served(shared_client: TestClient, path: str, kind: str) -> None:
    response = shared_client.get(path)
    assert response.status_code == 200 and kind in response.headers["content-type"]
    assert len(response.content) > 100


def test_a_missing_static_file_is_a_404_envelope(shared_client: TestClient) -> None:
    error(shared_client.get("/static/nope.js"), 404)


def test_every_element_the_scripts_look_up_is_on_the_page(shared_client: TestClient) -> None:
    page = shared_client.get("/").text
    wanted = {found for name in SCRIPTS for found in re.findall(
        r"\$\('([\w-]+)'\)", shared_client.get(f"/static/{name}").text)}
    assert len(wanted) > 10 and {i for i in wanted if f'id="{i}"' not in page} == set()


# ---- state ------------------------------------------------------------------------------


def test_states_before_and_after_training(shared_client: TestClient) -> None:
    found = states(shared_client)
    assert set(found) == set(MODEL_NAMES)
    for name in MODEL_NAMES:
        assert found[name] == ("healthy" if name in TRAINED else "no_version"), name


def test_a_future_cooldown_is_cooling_down_and_a_past_one_is_not(
        make_client: ClientFactory) -> None:
    now = datetime.now(UTC)

    def prepare(settings: Settings) -> None:
        atomic_write_json(settings.LOGS_DIR / STATE_FILE, {
            "decision_support": {"verdict": "degraded", "cooldown": {
                "newest_data": "2026-11-01 00:00:00",
                "until": (now + timedelta(hours=3)).isoformat()}},
            "anomaly_detection": {"verdict": "degraded", "cooldown": {
                "newest_data": "2026-11-01 00:00:00",
                "until": (now - timedelta(minutes=1)).isoformat()}}})

    found = states(make_client(prepare))
    assert found["decision_support"] == "cooling_down"
    assert found["anomaly_detection"] == "degraded"  # cooled down; the verdict still stands


def test_the_monitors_verdict_on_the_serving_version_sets_degraded_or_watch(
        make_client: ClientFactory) -> None:
    def prepare(settings: Settings) -> None:
        atomic_write_json(settings.LOGS_DIR / STATE_FILE, {
            "decision_support": {"verdict": "degraded", "version": "v0001"},
            "anomaly_detection": {"verdict": "watch", "version": "v0001"},
            # about v0001, which v0002 has replaced since: says nothing about what serves
            ROLLBACK: {"verdict": "degraded", "version": "v0001"}})
        # A check entry alone is history: the monitor's standing verdict decides.
        history(settings).append_check(check_of("scenario_analysis", "degraded", "v0001",
                                                "2026-11-02T05:00:00+00:00"))

    found = states(make_client(prepare))
    assert found["decision_support"] == "degraded"
    assert found["anomaly_detection"] == "watch"
    assert found[ROLLBACK] == "healthy"
    assert found["scenario_analysis"] == "healthy"


def test_models_of_the_running_run_are_retraining(make_client: ClientFactory) -> None:
    client = make_client()
    logs = app_settings(client).LOGS_DIR
    with file_lock(logs / "training.lock", timeout=0, purpose="run_id=run-dash manual"):
        atomic_write_json(logs / "training_progress.json", {
            "run_id": "run-dash", "trigger": "manual", "total": 3, "done": 1,
            "in_flight": ["decision_support", "delay_prediction"],
            "finished": ["anomaly_detection"]})
        found = states(client)
    # A manual run is routine training; a model never trained stays no_version meanwhile.
    assert {n for n, s in found.items() if s == "training"} == {
        "decision_support", "anomaly_detection"}
    assert found["delay_prediction"] == "no_version"
    assert states(client)["decision_support"] == "healthy"  # the lock is let go


def test_a_retrain_is_retraining_and_before_its_progress_is_written_nothing_is(
        make_client: ClientFactory) -> None:
    """The runner writes its progress first thing after taking the lock; in the instant
    before, the run is known (by the lock) but no model is claimed for it."""
    client = make_client()
    logs = app_settings(client).LOGS_DIR
    with file_lock(logs / "training.lock", timeout=0, purpose="run_id=run-early retrain"):
        assert set(states(client).values()) <= {"healthy", "no_version"}
        assert ok(client.get("/ml/training/status"))["trainer_status"]["is_training"]
        atomic_write_json(logs / "training_progress.json", {
            "run_id": "run-early", "trigger": "retrain", "started_at": "2026-11-02T05:00:00",
            "total": 1, "done": 0, "in_flight": ["scenario_analysis"], "finished": [],
            "models": ["scenario_analysis"]})
        found = states(client)
    assert [n for n, s in found.items() if s == "retraining"] == ["scenario_analysis"]


# ---- timeline ---------------------------------------------------------------------------


def test_timeline_of_a_model_trained_twice(shared_client: TestClient) -> None:
    data = ok(shared_client.get(f"/ml/models/{ROLLBACK}/timeline"))
    assert data["model"] == ROLLBACK and data["metric"] == "accuracy"
    assert 0 < data["threshold"] < 1
    assert data["aliases"] == {"production": "v0002", "previous": "v0001"}
    training = [p for p in data["points"] if p["kind"] == "training"]
    assert [p["version"] for p in training] == ["v0001", "v0002"]
    assert all(0 <= p["score"] <= 1 for p in training)
    promotions = [e for e in data["events"] if e["kind"] == "promotion"]
    assert [e["version"] for e in promotions] == ["v0001", "v0002"]
    times = [datetime.fromisoformat(x["time"]) for x in data["points"] + data["events"]]
    assert all(t.tzinfo is not None for t in times)


def test_timeline_has_live_scores_from_checks(shared_client: TestClient) -> None:
    data = ok(shared_client.get("/ml/models/decision_support/timeline"))
    live = [p for p in data["points"] if p["kind"] == "live"]
    expected = CHECK["models"]["decision_support"]
    assert live == [{"time": CHECK["timestamp"], "score": expected["live_score"],
                     "kind": "live", "version": "v0001"}]
    assert data["points"][0] == live[0]  # oldest first: the check predates the training


def test_timeline_of_a_model_never_trained_is_empty(shared_client: TestClient) -> None:
    data = ok(shared_client.get("/ml/models/delay_prediction/timeline"))
    assert data["points"] == [] and data["events"] == []
    assert data["aliases"] == {"production": None, "previous": None}


def test_timeline_limit_keeps_the_newest(shared_client: TestClient) -> None:
    data = ok(shared_client.get(f"/ml/models/{ROLLBACK}/timeline", params={"limit": 1}))
    assert [p["version"] for p in data["points"]] == ["v0002"]
    assert [e["version"] for e in data["events"]] == ["v0002"]


def test_timeline_shows_retrains_rollbacks_and_alerts(make_client: ClientFactory) -> None:
    def prepare(settings: Settings) -> None:
        services = Services.from_settings(settings)
        services.alerts.notify("critical", "accuracy_below_threshold", "3 attempts failed",
                               model=ROLLBACK)
        services.alerts.notify("warning", "drift_detected", "another model", model="x")
        services.history.append_training({
            "run_id": "run-retrain", "timestamp": datetime.now(UTC).isoformat(),
            "trigger": "retrain", "status": "success", "models": [ROLLBACK],
            "model_details": {"risk_decision_models": {ROLLBACK: {
                "score": 0.5, "version": "v0003", "promoted": False,
                "decision": "kept as candidate: score 0.5000 is below its threshold"}}}})

    client = make_client(prepare)
    ok(client.post(f"/ml/models/{ROLLBACK}/rollback"))
    events = ok(client.get(f"/ml/models/{ROLLBACK}/timeline"))["events"]
    kinds = [e["kind"] for e in events]
    assert kinds.count("alert") == 1 and kinds.count("retrain") == 1
    assert kinds[-1] == "rollback" and events[-1]["version"] == "v0001"
    assert "v0002 -> v0001 by api" in events[-1]["detail"]
    alert = next(e for e in events if e["kind"] == "alert")
    assert "3 attempts failed" in alert["detail"]
    retrain = next(e for e in events if e["kind"] == "retrain")
    assert "run-retrain" in retrain["detail"] and "kept as candidate" in retrain["detail"]
    assert retrain["detail"].count("0.5000") == 1  # the decision names the score once


def test_timeline_of_an_unknown_model_is_a_404_envelope(shared_client: TestClient) -> None:
    body = error(shared_client.get("/ml/models/nope/timeline"), 404)
    assert "delay_prediction" in body["message"]


@pytest.mark.parametrize("limit", ["0", "1001", "-5", "many"])
def test_timeline_refuses_a_bad_limit(shared_client: TestClient, limit: str) -> None:
    body = error(shared_client.get("/ml/models/decision_support/timeline",
                                   params={"limit": limit}), 422)
    assert "limit" in body["message"]
