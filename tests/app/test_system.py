"""Start-up, shutdown, logging, health, docs and the error envelope outside the routes."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from logging.handlers import WatchedFileHandler
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.app.deps import get_services
from backend.app.main import create_app
from backend.ml.config import Settings, get_settings
from backend.ml.fsio import lock_holder
from backend.ml.history import History
from backend.ml.logsetup import LOG_FILE_NAME, configure_logging
from tests.app.conftest import (
    ClientFactory,
    app_settings,
    build_app,
    error,
    fresh_copy,
    ok,
    settings_for,
)


def test_health_reports_version_and_database(shared_client: TestClient) -> None:
    data = ok(shared_client.get("/health"))
    assert data["status"] == "ok" and data["version"]
    assert data["database"]["reachable"] is True and data["database"]["url"].startswith("sqlite")


def test_health_says_when_the_database_is_unreachable(make_client: ClientFactory,
                                                      tmp_path: Path) -> None:
    client = make_client(DATABASE_URL=f"sqlite:///{tmp_path / 'missing.db'}")
    data = ok(client.get("/health"))
    assert data["status"] == "degraded" and data["database"]["reachable"] is False
    assert "does not exist" in data["database"]["error"]


def test_docs_and_openapi_document_every_route(shared_client: TestClient) -> None:
    assert shared_client.get("/api/docs").status_code == 200
    spec = shared_client.get("/openapi.json").json()
    expected = {("get", "/ml/training/status"), ("post", "/ml/training/trigger"),
                ("get", "/ml/training/runs/{run_id}"), ("get", "/ml/training/history"),
                ("get", "/ml/models"), ("get", "/ml/models/{name}"),
                ("get", "/ml/models/{name}/versions"), ("get", "/ml/models/{name}/timeline"),
                ("get", "/ml/models/{name}/production"), ("post", "/ml/models/{name}/rollback"),
                ("post", "/ml/models/{name}/predict"), ("get", "/ml/alerts"), ("get", "/health"),
                ("get", "/ml/backtest"), ("get", "/ml/backtest/latest")}
    card = ("get", "/ml/models/{name}/versions/{version}/card")  # a page, not the envelope
    chart = ("get", "/ml/backtest/latest.svg")  # an image
    found = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert found == expected | {card, chart}
    assert set(spec["paths"][card[1]]["get"]["responses"]["200"]["content"]) == {
        "text/html", "text/markdown"}
    assert set(spec["paths"][chart[1]]["get"]["responses"]["200"]["content"]) == {
        "image/svg+xml"}
    for method, path in expected:
        responses = spec["paths"][path][method]["responses"]
        success = [code for code in responses if code.startswith("2")]
        assert success, (method, path)
        for code in success:
            assert "$ref" in str(responses[code]["content"]["application/json"]["schema"])
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, code)
    secured = {(m, p) for p, ops in spec["paths"].items() for m, op in ops.items()
               if op.get("security")}
    assert secured == {("post", "/ml/training/trigger"), ("post", "/ml/models/{name}/rollback")}


def test_start_up_is_fast_and_writes_nothing(trained_root: Path, small_db: str,
                                             tmp_path: Path) -> None:
    settings = settings_for(fresh_copy(trained_root, tmp_path), small_db)
    registry = settings.MODELS_DIR / "registry.json"
    before = registry.read_bytes(), settings.history_file.read_bytes()
    client = TestClient(build_app(settings))
    started = time.perf_counter()
    with client:
        elapsed = time.perf_counter() - started
        ok(client.get("/health"))
    assert elapsed < 2.0, f"start-up took {elapsed:.2f} s"
    assert (registry.read_bytes(), settings.history_file.read_bytes()) == before


def test_start_up_marks_runs_left_running_as_interrupted(make_client: ClientFactory) -> None:
    def leave_running(settings: Settings) -> None:
        History(settings.history_file).append_training(
            {"run_id": "run-dead", "status": "running", "trigger": "manual"})

    client = make_client(prepare=leave_running)
    assert ok(client.get("/ml/training/runs/run-dead"))["status"] == "interrupted"


@pytest.mark.parametrize("variable, value", [("DAILY_TRAINING_TIME", "25:99"),
                                             ("MIN_ACCURACY_THRESHOLD", "1.5"),
                                             ("TRAINING_TIMEZONE", "Mars/Olympus")])
def test_a_bad_setting_fails_start_up_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=variable), TestClient(create_app()):
            pass
    finally:
        get_settings.cache_clear()


def test_log_file_is_written_and_the_missing_key_warned(make_client: ClientFactory) -> None:
    client = make_client()
    log = app_settings(client).LOGS_DIR / LOG_FILE_NAME
    text = log.read_text()
    assert "ML_API_KEY is not set" in text and "API ready" in text


def test_logging_setup_creates_the_folder_and_is_idempotent(tmp_path: Path) -> None:
    logger = logging.getLogger("backend")
    before = list(logger.handlers)
    try:
        path = configure_logging(tmp_path / "a" / "logs")
        configure_logging(tmp_path / "a" / "logs")
        files = [h for h in logger.handlers if isinstance(h, WatchedFileHandler)]
        assert path.parent.is_dir() and len(files) == 1 and len(logger.handlers) == 2
        configure_logging(tmp_path / "b")  # another folder replaces, never adds
        files = [h for h in logger.handlers if isinstance(h, WatchedFileHandler)]
        assert [Path(h.baseFilename).parent for h in files] == [tmp_path / "b"]
        logging.getLogger("backend.ml.test").info("hello file")
        assert "hello file" in (tmp_path / "b" / LOG_FILE_NAME).read_text()
    finally:
        for handler in list(logger.handlers):
            if handler not in before:
                logger.removeHandler(handler)
                handler.close()


def test_an_unexpected_error_is_a_short_500_and_logged(make_client: ClientFactory) -> None:
    client = make_client()

    def broken() -> None:
        raise RuntimeError("secret internals")

    client.app.dependency_overrides[get_services] = broken  # type: ignore[attr-defined]
    body = error(client.get("/ml/training/history"), 500)
    assert "secret" not in body["message"] and "ref " in body["message"]
    ref = body["message"].split("ref ")[1].split(")")[0]
    log = (app_settings(client).LOGS_DIR / LOG_FILE_NAME).read_text()
    assert ref in log and "secret internals" in log and "Traceback" in log


def test_unknown_path_and_method_use_the_envelope(shared_client: TestClient) -> None:
    error(shared_client.get("/ml/nothing"), 404)
    response = shared_client.delete("/health")
    error(response, 405)
    assert response.headers["allow"] == "GET"


def test_the_scheduler_runs_with_the_app_and_stops_with_it(
        trained_root: Path, small_db: str, tmp_path: Path) -> None:
    settings = settings_for(fresh_copy(trained_root, tmp_path), small_db,
                            SCHEDULER_ENABLED=True, PERFORMANCE_CHECK_INTERVAL=3600)
    History(settings.history_file).append_training({  # a full run today: nothing to catch up
        "run_id": "run-full", "status": "success", "trigger": "daily", "models_trained": 17,
        "timestamp": datetime.now(UTC).isoformat()})
    lease = settings.LOGS_DIR / "scheduler.lease"
    with TestClient(build_app(settings)) as client:
        deadline = time.monotonic() + 10
        while not (data := ok(client.get("/ml/training/status")))["scheduler_active"]:
            assert time.monotonic() < deadline, data
            time.sleep(0.05)
        assert data["scheduler_enabled"] is True and "pid=" in data["lease_holder"]
        datetime.strptime(data["next_run"], "%Y-%m-%d %H:%M:%S")
        assert data["next_check"] is not None
        assert lock_holder(lease) is not None
    assert lock_holder(lease) is None
