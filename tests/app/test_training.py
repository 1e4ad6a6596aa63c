"""Training endpoints: the guide's status, trigger and history shapes, runs, conflicts."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.ml.fleet.specs import MODEL_NAMES
from backend.ml.fsio import file_lock
from tests.app.conftest import CHECK, TRAINED, ClientFactory, app_settings, error, ok

GUIDE_STATS = {"total_trainings", "successful_trainings", "success_rate",
               "total_models_trained", "avg_accuracy", "last_training"}
GUIDE_RESULT = {"status", "timestamp", "duration_seconds", "models_trained",
                "successful_models", "failed_models", "avg_accuracy", "model_details"}
FAST = "supplier_performance"


def wait_for_run(client: TestClient, run_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (run := ok(client.get(f"/ml/training/runs/{run_id}")))["status"] == "running":
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    return run  # type: ignore[no-any-return]


def test_status_has_the_guide_shape_and_more(shared_client: TestClient) -> None:
    data = ok(shared_client.get("/ml/training/status"))
    assert {"scheduler_active", "training_time", "trainer_status", "next_run"} <= set(data)
    assert {"next_check", "lease_holder", "progress", "last_check"} <= set(data)
    assert data["scheduler_active"] is False and data["training_time"] == "02:00"
    trainer = data["trainer_status"]
    assert trainer["is_training"] is False and data["progress"] is None
    assert GUIDE_STATS <= set(trainer["stats"])
    assert trainer["stats"]["total_trainings"] == 2
    assert trainer["last_training_time"] == trainer["stats"]["last_training"]
    assert data["last_check"] == CHECK["timestamp"]
    assert data["served_by"] == os.getpid()


def test_history_has_the_guide_shape(shared_client: TestClient) -> None:
    data = ok(shared_client.get("/ml/training/history"))
    assert set(data["history"]) == {"trainings", "model_versions"}
    assert GUIDE_STATS <= set(data["stats"])
    newest, oldest = data["history"]["trainings"]
    assert newest["timestamp"] > oldest["timestamp"] and newest["status"] == "success"
    assert set(oldest["models"]) == set(TRAINED)
    assert set(data["history"]["model_versions"]) == set(TRAINED)
    assert len(data["history"]["model_versions"][FAST]) == 2


@pytest.mark.parametrize("query, count", [
    ("limit=1", 1), ("offset=1", 1), ("offset=2", 0), ("status=success", 2),
    ("status=failed", 0), (f"model={FAST}", 2), ("model=anomaly_detection", 1),
    ("since=2000-01-01T00:00:00", 2), ("since=2999-01-01T00:00:00%2B05:30", 0)])
def test_history_filters(shared_client: TestClient, query: str, count: int) -> None:
    data = ok(shared_client.get(f"/ml/training/history?{query}"))
    assert len(data["history"]["trainings"]) == data["page"]["count"] == count


def test_history_filtered_by_model_keeps_only_its_versions(shared_client: TestClient) -> None:
    data = ok(shared_client.get(f"/ml/training/history?model={FAST}"))
    assert list(data["history"]["model_versions"]) == [FAST]


@pytest.mark.parametrize("query, field", [
    ("limit=0", "query.limit"), ("limit=501", "query.limit"), ("limit=ten", "query.limit"),
    ("offset=-1", "query.offset"), ("status=done", "query.status"),
    ("model=nope", "query.model"), ("since=yesterday", "query.since")])
def test_bad_history_queries_are_422_naming_the_field(shared_client: TestClient, query: str,
                                                      field: str) -> None:
    body = error(shared_client.get(f"/ml/training/history?{query}"), 422)
    assert body["message"].startswith(field) and body["details"][0]["field"] == field
    if field == "query.model":
        assert all(name in body["message"] for name in MODEL_NAMES)


def test_unknown_run_is_404(shared_client: TestClient) -> None:
    assert "run-nope" in error(shared_client.get("/ml/training/runs/run-nope"), 404)["message"]


def test_trigger_answers_202_with_location_and_the_run_lands_in_history(
        make_client: ClientFactory) -> None:
    client = make_client()
    response = client.post(f"/ml/training/trigger?models={FAST}")
    data = ok(response, 202)
    assert data["status"] == "running" and data["run_id"].startswith("run-")
    assert response.headers["location"] == f"/ml/training/runs/{data['run_id']}"
    run = wait_for_run(client, data["run_id"])
    assert run["status"] == "success" and run["actor"] == "api" and run["trigger"] == "manual"
    assert run["progress"] is None
    history = ok(client.get("/ml/training/history?limit=1"))["history"]["trainings"]
    assert history[0]["run_id"] == data["run_id"]
    versions = ok(client.get(f"/ml/models/{FAST}/versions"))["versions"]
    assert versions[0]["run_id"] == data["run_id"]


def test_trigger_while_a_run_holds_the_lock_is_409_naming_it(
        make_client: ClientFactory) -> None:
    client = make_client()
    lock = app_settings(client).LOGS_DIR / "training.lock"
    with file_lock(lock, timeout=0, purpose="run_id=run-elsewhere daily"):
        body = error(client.post(f"/ml/training/trigger?models={FAST}"), 409)
        assert body["run_id"] == "run-elsewhere" and "run-elsewhere" in body["message"]
        assert error(client.post("/ml/training/trigger?wait=true"), 409)["run_id"] == (
            "run-elsewhere")
        status = ok(client.get("/ml/training/status"))
        assert status["trainer_status"]["is_training"] is True
        assert status["progress"]["run_id"] == "run-elsewhere"
        run = ok(client.get("/ml/training/runs/run-elsewhere"))
        assert run["status"] == "running" and run["progress"]["run_id"] == "run-elsewhere"
    assert ok(client.get("/ml/training/history"))["stats"]["total_trainings"] == 2


def test_trigger_with_wait_returns_the_guide_result_and_the_loop_keeps_answering(
        make_client: ClientFactory) -> None:
    client = make_client()
    answers: list[Any] = []
    waiting = threading.Thread(target=lambda: answers.append(
        client.post(f"/ml/training/trigger?models={FAST},decision_support&wait=true")))
    waiting.start()
    seen_running = False
    while waiting.is_alive():  # the event loop answers while the run trains
        started = time.perf_counter()
        status = ok(client.get("/ml/training/status"))
        assert time.perf_counter() - started < 2
        seen_running = seen_running or status["trainer_status"]["is_training"]
        time.sleep(0.02)
    waiting.join()
    assert seen_running
    result = ok(answers[0], 200)
    assert GUIDE_RESULT <= set(result) and result["status"] == "success"
    assert result["models_trained"] == 2 and result["run_id"].startswith("run-")
    assert set(result["model_details"]["risk_decision_models"]) == {FAST, "decision_support"}
    assert ok(client.get(f"/ml/training/runs/{result['run_id']}"))["status"] == "success"


@pytest.mark.parametrize("models", ["nope", f"{FAST},nope", "", " , "])
def test_trigger_with_bad_model_names_is_422_listing_valid_ones(
        shared_client: TestClient, models: str) -> None:
    body = error(shared_client.post(f"/ml/training/trigger?models={models}"), 422)
    assert body["message"].startswith("query.models")
    assert all(name in body["message"] for name in MODEL_NAMES)


def test_trigger_with_a_bad_wait_flag_is_422(shared_client: TestClient) -> None:
    assert error(shared_client.post("/ml/training/trigger?wait=perhaps"), 422)[
        "message"].startswith("query.wait")


def test_a_run_that_cannot_read_its_data_fails_visibly(make_client: ClientFactory,
                                                       tmp_path: Path) -> None:
    client = make_client(DATABASE_URL=f"sqlite:///{tmp_path / 'gone.db'}")
    body = error(client.post(f"/ml/training/trigger?models={FAST}&wait=true"), 500)
    assert "does not exist" in body["message"] and body["run_id"] in body["message"]
    assert ok(client.get(f"/ml/training/runs/{body['run_id']}"))["status"] == "failed"
    run_id = ok(client.post(f"/ml/training/trigger?models={FAST}"), 202)["run_id"]
    run = wait_for_run(client, run_id)
    assert run["status"] == "failed" and "does not exist" in run["errors"][0]
    alerts = ok(client.get("/ml/alerts"))["alerts"]
    assert {a["kind"] for a in alerts} == {"training_failed"}
