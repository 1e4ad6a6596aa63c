"""Escalation through the one alert path: a graver alert passes a milder one's cooldown and
reaches the mail server, a repeat is held back (logged at INFO naming what held it, and
counted in /metrics), and a degraded model that is healthy again raises one `recovered`."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from fastapi.testclient import TestClient

from backend.app.main import create_app
from backend.ml.config import Settings, get_settings
from backend.ml.data import loading, synthetic
from backend.ml.monitoring.check import Monitor
from backend.ml.monitoring.state import ModelMonitorState, monitor_file, read_state
from backend.ml.runs.promote import save_and_promote
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from tests.peers import SMTPServer

MODEL = "delay_prediction"
FAST = "decision_support"  # a dozen fresh rows a day: enough for a verdict in ten days
START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def settings_for(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(MODELS_DIR=tmp_path / "models", LOGS_DIR=tmp_path / "logs",
                    TRAINING_N_JOBS=1, SCHEDULER_ENABLED=False, **extra)


@pytest.fixture
def client_for() -> Iterator[Any]:
    opened: list[TestClient] = []

    def build(settings: Settings) -> TestClient:
        app = create_app()
        app.dependency_overrides[get_settings] = lambda: settings
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.__exit__(None, None, None)


def suppressed_metric(client: TestClient, kind: str, level: str) -> float:
    prefix = f'ml_alerts_suppressed_total{{kind="{kind}",level="{level}"}} '
    lines = [line for line in client.get("/metrics").text.splitlines()
             if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


def test_a_critical_alert_passes_a_warnings_cooldown_and_a_repeat_is_held_back(
        tmp_path: Path, smtp: SMTPServer, caplog: pytest.LogCaptureFixture,
        client_for: Any) -> None:
    settings = settings_for(tmp_path, ALERT_COOLDOWN_SECONDS=3600, **smtp.env())
    alerts = Services.from_settings(settings).alerts
    caplog.set_level(logging.INFO, logger="backend.ml.alerts.service")
    with time_machine.travel(START, tick=False) as clock:
        assert alerts.notify("warning", "drift_detected", "inputs moved", model=MODEL)
        clock.shift(timedelta(minutes=10))
        critical = alerts.notify("critical", "drift_detected", "inputs moved far", model=MODEL)
        assert critical is not None  # the warning's cooldown does not hold a graver one
        clock.shift(timedelta(minutes=10))
        assert alerts.notify("warning", "drift_detected", "inputs moved", model=MODEL) is None
        assert alerts.notify("critical", "drift_detected", "again", model=MODEL) is None
        # The key is kind, model and level: another model's warning is its own.
        assert alerts.notify("warning", "drift_detected", "moved", model="cost_prediction")
    assert alerts.flush(30)

    subjects = [m["Subject"] for m in smtp.inbox.messages]
    assert subjects == [f"[ML scheduler] WARNING drift_detected: {MODEL}",
                        f"[ML scheduler] CRITICAL drift_detected: {MODEL}",
                        "[ML scheduler] WARNING drift_detected: cost_prediction"]
    held = [r for r in caplog.records if "suppressed" in r.getMessage()]
    assert [r.levelno for r in held] == [logging.INFO, logging.INFO]
    assert (f"alert drift_detected (warning) for {MODEL} suppressed by the warning alert of "
            "2026-12-01T08:00:00+00:00") in held[0].getMessage()
    assert (f"alert drift_detected (critical) for {MODEL} suppressed by the critical alert "
            "of 2026-12-01T08:10:00+00:00") in held[1].getMessage()

    client = client_for(settings)
    assert suppressed_metric(client, "drift_detected", "warning") == 1.0
    assert suppressed_metric(client, "drift_detected", "critical") == 1.0
    assert "ml_alerts_total{kind=\"drift_detected\"} 3.0" in client.get("/metrics").text


def test_a_degraded_model_that_is_healthy_again_raises_one_recovered_alert(
        small_db: str, small_tables: dict, trained: dict, tmp_path: Path, smtp: SMTPServer,
        client_for: Any) -> None:
    database = tmp_path / "loop.db"
    shutil.copy(small_db.removeprefix("sqlite:///"), database)
    settings = settings_for(tmp_path, DATABASE_URL=f"sqlite:///{database}", **smtp.env())
    services = Services.from_settings(settings)
    save_and_promote(services, "run-fixture", [trained[FAST]], small_tables, actor="cli")
    runner = Runner(services)
    synthetic.simulate(loading.writable_engine(settings.DATABASE_URL), days=10)
    since = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)
    with monitor_file(settings.LOGS_DIR).update() as state:  # the monitor holds it degraded
        state.root[FAST] = ModelMonitorState(verdict="degraded", version="v0001", since=since)

    monitor = Monitor(runner, backoff_seconds=0)
    checked = monitor.run_check()["models"][FAST]
    assert checked["verdict"] == "healthy", checked
    monitor.run_check()  # healthy again: nothing more to announce
    assert runner.services.alerts.flush(30)

    [recovered] = [a for a in runner.services.history.alerts() if a["kind"] == "recovered"]
    assert recovered["level"] == "info" and recovered["model"] == FAST
    assert recovered["live_score"] == checked["live_score"]
    assert recovered["degraded_since"] == since.isoformat()
    assert f"{FAST} is healthy again (degraded since 2026-11-30T22:00:00+00:00)" in (
        recovered["message"])
    assert read_state(settings.LOGS_DIR).of(FAST).verdict == "healthy"
    assert [m["Subject"] for m in smtp.inbox.messages] == [
        f"[ML scheduler] INFO recovered: {FAST}"]

    timeline = client_for(settings).get(f"/ml/models/{FAST}/timeline").json()["data"]
    assert [e["detail"] for e in timeline["events"] if e["kind"] == "alert"] == [
        f"info recovered: {recovered['message']}"]
