"""GET /metrics: the Prometheus text, its values against the store and the history, and
counters that never go down when the history archives old entries."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from backend.app.deps import get_services
from backend.app.prometheus import DURATION_BUCKETS
from backend.ml.fleet.specs import MODEL_NAMES
from backend.ml.fsio import atomic_write_json, file_lock
from backend.ml.history import History
from backend.ml.monitoring.state import STATE_FILE
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from tests.app.conftest import TRAINED, ClientFactory, app_settings, ok, settings_for

Families = dict[str, Metric]
PER_MODEL = ("ml_model_score", "ml_model_threshold", "ml_model_production_version",
             "ml_model_degraded")


def scrape(client: TestClient) -> Families:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def values(families: Families, name: str, label: str, sample: str | None = None
           ) -> dict[str, float]:
    """{label value: sample value} of one family (`sample`: e.g. its `_bucket` series)."""
    wanted = sample or name
    return {s.labels[label]: s.value for s in families[name].samples if s.name == wanted}


def single(families: Families, name: str, sample: str | None = None) -> float:
    found = [s.value for s in families[name].samples if s.name == (sample or name)]
    assert len(found) == 1, families[name].samples
    return found[0]


def services_of(client: TestClient) -> Services:
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    return services


def counters(families: Families) -> dict[tuple[str, str], float]:
    """Every sample of the all-time counters and the duration histogram."""
    found = {}
    for name in ("ml_training_runs", "ml_retrain_attempts", "ml_alerts",
                 "ml_training_duration_seconds"):
        for s in families[name].samples:
            found[(s.name, json.dumps(s.labels, sort_keys=True))] = s.value
    return found


def test_scrape_is_prometheus_text_naming_all_17(shared_client: TestClient) -> None:
    families = scrape(shared_client)
    for name in PER_MODEL:
        assert set(values(families, name, "model")) == set(MODEL_NAMES), name
        assert families[name].type == "gauge"
    assert families["ml_training_runs"].type == "counter"
    assert families["ml_training_duration_seconds"].type == "histogram"
    assert all(families[n].documentation for n in families)
    scores = values(families, "ml_model_score", "model")
    versions = values(families, "ml_model_production_version", "model")
    untrained = set(MODEL_NAMES) - set(TRAINED)
    assert all(math.isnan(scores[n]) and versions[n] == 0 for n in untrained)
    assert all(0 < scores[n] <= 1 and versions[n] >= 1 for n in TRAINED)
    groups = {s.labels["model"]: s.labels["group"]
              for s in families["ml_model_threshold"].samples}
    assert groups["delay_prediction"] == "prediction"
    assert groups["anomaly_detection"] == "risk_decision"


def test_model_values_match_the_store_and_models_endpoint(shared_client: TestClient) -> None:
    families = scrape(shared_client)
    rows = {row["name"]: row for row in ok(shared_client.get("/ml/models"))["models"]}
    store = services_of(shared_client).store
    versions = values(families, "ml_model_production_version", "model")
    scores = values(families, "ml_model_score", "model")
    thresholds = values(families, "ml_model_threshold", "model")
    trained = values(families, "ml_model_last_trained_timestamp_seconds", "model")
    for name in TRAINED:
        meta = store.production_meta(name)
        assert meta is not None
        assert rows[name]["production_version"] == meta["version"]
        assert versions[name] == int(meta["version"].removeprefix("v"))
        assert scores[name] == pytest.approx(meta["score"]) == rows[name]["score"]
        assert trained[name] == pytest.approx(
            datetime.fromisoformat(meta["created_at"]).timestamp())
    assert set(trained) == set(TRAINED)  # no timestamp for a model never trained
    assert thresholds == pytest.approx({n: rows[n]["threshold"] for n in MODEL_NAMES})
    # The conftest check scored decision_support; scenario_analysis had too few fresh rows.
    assert values(families, "ml_model_live_score", "model") == {"decision_support": 0.71}
    assert values(families, "ml_model_drift_psi", "model") == {"decision_support": 0.31}
    assert set(values(families, "ml_model_degraded", "model").values()) == {0.0}
    assert single(families, "ml_training_in_progress") == 0
    assert single(families, "ml_scheduler_lease_held") == 0  # SCHEDULER_ENABLED is false


def test_runs_and_durations_match_the_history(make_client: ClientFactory,
                                              tmp_path: Path) -> None:
    client = make_client()
    settings = app_settings(client)
    history = services_of(client).history
    # A real failed run: the database is missing, so it fails after being recorded.
    broken = settings_for(settings.MODELS_DIR.parent, f"sqlite:///{tmp_path / 'none.db'}")
    with pytest.raises(Exception, match="does not exist"):
        Runner(Services.from_settings(broken)).run(models=["scenario_analysis"])
    for i, seconds in enumerate((42.5, 30.0, 30.4)):  # on and just past a bucket bound
        history.append_training({"run_id": f"run-ok{i}", "status": "success",
                                 "trigger": "daily", "duration_seconds": seconds,
                                 "successful_models": 17})
    history.append_training({"run_id": "run-no-duration", "status": "interrupted"})
    history.append_training({"run_id": "run-now", "status": "running"})
    families = scrape(client)

    runs = values(families, "ml_training_runs", "status", "ml_training_runs_total")
    by_status = history.stats()["by_status"]
    assert by_status["failed"] == 1 and by_status["success"] >= 3
    assert runs == {s: float(by_status.get(s, 0))
                    for s in ("success", "partial", "failed", "interrupted")}
    finished = [t for t in history.trainings(limit=500, archived=True)
                if t["status"] != "running" and "duration_seconds" in t]
    durations = [float(t["duration_seconds"]) for t in finished]
    assert len(durations) == sum(by_status.values()) - 1  # all but the interrupted one
    buckets = values(families, "ml_training_duration_seconds", "le",
                     "ml_training_duration_seconds_bucket")
    assert buckets == {**{str(float(b)): float(sum(d <= b for d in durations))
                          for b in DURATION_BUCKETS}, "+Inf": float(len(durations))}
    # 30.4 s and 42.5 s, and a fixture's own run if a busy machine made it that slow
    assert buckets["60.0"] - buckets["30.0"] == sum(30 < d <= 60 for d in durations) >= 2
    assert single(families, "ml_training_duration_seconds",
                  "ml_training_duration_seconds_count") == len(durations)
    assert single(families, "ml_training_duration_seconds",
                  "ml_training_duration_seconds_sum") == pytest.approx(sum(durations))
    alerts = values(families, "ml_alerts", "kind", "ml_alerts_total")
    assert alerts["training_failed"] == 1


def test_an_alert_is_counted_by_kind(make_client: ClientFactory) -> None:
    client = make_client()
    before = values(scrape(client), "ml_alerts", "kind", "ml_alerts_total")
    services_of(client).history.append_alert({"level": "warning", "kind": "drift_detected",
                                              "model": "delay_prediction", "message": "x"})
    after = values(scrape(client), "ml_alerts", "kind", "ml_alerts_total")
    assert after == {**before, "drift_detected": before.get("drift_detected", 0) + 1}


def test_degraded_follows_the_health_state(make_client: ClientFactory) -> None:
    """1 exactly for the states that need the loop or a person (degraded, retraining,
    cooling_down); a check's verdict about a version the monitor has since recovered, or a
    model with no version, counts as nothing."""
    client = make_client()
    settings = app_settings(client)
    atomic_write_json(settings.LOGS_DIR / STATE_FILE, {
        "supplier_performance": {"verdict": "degraded"},
        "decision_support": {"verdict": "healthy"},
        "delay_prediction": {"verdict": "degraded"},  # never trained: no_version
        "scenario_analysis": {"verdict": "healthy", "cooldown": {
            "newest_data": "2026-10-31", "until": "2999-01-01T00:00:00+00:00"}}})
    services_of(client).history.append_check({"models": {
        "decision_support": {"verdict": "degraded"}}})  # the monitor has since recovered it
    text = scrape(client)
    degraded = values(text, "ml_model_degraded", "model")
    assert {n for n, v in degraded.items() if v == 1} == {"supplier_performance",
                                                           "scenario_analysis"}
    assert set(degraded.values()) == {0.0, 1.0}
    states = {m["name"]: m["state"] for m in ok(client.get("/ml/models"))["models"]}
    assert states["supplier_performance"] == "degraded"
    assert states["scenario_analysis"] == "cooling_down"
    assert states["delay_prediction"] == "no_version"


def test_counters_never_go_down_while_the_history_archives(make_client: ClientFactory) -> None:
    client = make_client()
    settings = app_settings(client)
    real = services_of(client)
    # The same file with small limits, so a few appends archive entries.
    small = History(settings.history_file, limits={"trainings": 5, "alerts": 5})
    services = Services(real.settings, small)
    client.app.dependency_overrides[get_services] = lambda: services  # type: ignore[attr-defined]
    start = scrape(client)
    previous = counters(start)
    for i in range(12):
        small.append_training({"run_id": f"run-r{i}", "status": "success" if i % 3 else
                               "partial", "trigger": "retrain", "models": ["delay_prediction"],
                               "duration_seconds": 3.0 + i * 20})
        small.append_alert({"level": "error", "kind": "model_failed", "message": f"#{i}"})
        now = counters(scrape(client))
        assert set(previous) <= set(now)
        assert all(now[key] >= value for key, value in previous.items()), i
        previous = now
    assert small.archived_years()  # entries really moved out of the main file
    assert len(small.trainings(limit=100)) <= 5 and len(small.alerts(limit=100)) <= 5
    end = scrape(client)
    runs = "ml_training_runs_total"
    grew = {s: values(end, "ml_training_runs", "status", runs)[s]
            - values(start, "ml_training_runs", "status", runs)[s]
            for s in ("success", "partial")}
    assert grew == {"success": 8, "partial": 4}
    retrains = values(end, "ml_retrain_attempts", "model", "ml_retrain_attempts_total")
    assert retrains["delay_prediction"] == 12 and set(retrains) == set(MODEL_NAMES)
    assert (values(end, "ml_alerts", "kind", "ml_alerts_total")["model_failed"]
            - values(start, "ml_alerts", "kind", "ml_alerts_total").get("model_failed", 0)) == 12
    count = "ml_training_duration_seconds_count"
    assert (single(end, "ml_training_duration_seconds", count)
            - single(start, "ml_training_duration_seconds", count)) == 12


def test_a_history_written_before_the_metric_totals_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "training_history.json"
    old_totals = {"count": 3, "successful": 2, "by_status": {"success": 2, "failed": 1},
                  "models_trained": 51, "accuracy_sum": 1.6, "accuracy_count": 2,
                  "last_training": "2024-01-03T02:00:00+00:00"}
    path.write_text(json.dumps({
        "trainings": [{"run_id": "r4", "status": "success", "trigger": "retrain",
                       "models": ["cost_prediction"], "duration_seconds": 7.2,
                       "timestamp": "2024-02-01T02:00:00+00:00"}],
        "checks": [], "model_versions": {},
        "alerts": [{"kind": "model_failed", "timestamp": "2024-02-01T02:00:00+00:00"}],
        "archive": {"trainings": old_totals, "checks": 0, "alerts": 4, "model_versions": 0}}))
    history = History(path, limits={"alerts": 1})
    assert history.metrics_totals() == {
        "by_status": {"success": 3, "failed": 1}, "durations": {8: 1}, "duration_sum": 7.2,
        "retrains_by_model": {"cost_prediction": 1}, "alerts_by_kind": {"model_failed": 1}}
    assert history.stats()["total_trainings"] == 4
    history.append_alert({"kind": "missed_run"})  # archives the older alert
    assert history.metrics_totals()["alerts_by_kind"] == {"model_failed": 1, "missed_run": 1}


def test_training_in_progress_and_the_lease(make_client: ClientFactory) -> None:
    def trained_today(settings: Any) -> None:  # so the scheduler has nothing to catch up
        History(settings.history_file).append_training({
            "run_id": "run-full", "status": "success", "trigger": "daily",
            "models_trained": len(MODEL_NAMES), "timestamp": datetime.now(UTC).isoformat()})

    client = make_client(prepare=trained_today, SCHEDULER_ENABLED=True,
                         PERFORMANCE_CHECK_INTERVAL=3600)
    deadline = time.monotonic() + 10
    while not ok(client.get("/ml/training/status"))["scheduler_active"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert single(scrape(client), "ml_scheduler_lease_held") == 1
    with file_lock(app_settings(client).LOGS_DIR / "training.lock", timeout=0,
                   purpose="run_id=run-elsewhere manual"):
        assert single(scrape(client), "ml_training_in_progress") == 1
    assert single(scrape(client), "ml_training_in_progress") == 0
