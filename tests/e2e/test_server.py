"""Real uvicorn processes: one scheduler among many workers, and a server that answers
while it trains."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from backend.ml.fleet import specs
from backend.ml.history import History
from tests.e2e.servers import Server

pytestmark = pytest.mark.slow


def pretend_trained_today(logs_dir: Path) -> None:
    """A full run on record since the last 02:00, so start-up has nothing to catch up."""
    History(logs_dir / "training_history.json").append_training({
        "run_id": "run-setup", "timestamp": datetime.now(UTC).isoformat(), "trigger": "daily",
        "status": "success", "models_trained": len(specs.SPECS),
        "successful_models": len(specs.SPECS), "failed_models": 0})


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[object]:
    servers: list[Server] = []

    def start(db_url: str, **kwargs: object) -> Server:
        server = Server(tmp_path, db_url, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def holder_pid(holder: str | None) -> int | None:
    for part in (holder or "").split():
        if part.startswith("pid="):
            return int(part[4:])
    return None


def test_four_workers_run_exactly_one_scheduler_and_a_standby_takes_over(
        small_db: str, tmp_path: Path, server_factory) -> None:
    pretend_trained_today(tmp_path / "logs")
    server = server_factory(small_db, workers=4)
    server.wait_ready()
    deadline = time.monotonic() + 30
    while holder_pid(server.status()["lease_holder"]) is None:
        assert time.monotonic() < deadline, "no worker took the scheduler lease"
        time.sleep(0.2)
    seen: dict[int, dict] = {}
    for _ in range(400):  # requests spread over the workers
        status = server.status()
        seen[status["served_by"]] = status
        if len(seen) == 4:
            break
    assert len(seen) >= 2, "requests never reached more than one worker"
    holders = {s["lease_holder"] for s in seen.values()}
    assert len(holders) == 1
    active = [pid for pid, s in seen.items() if s["scheduler_active"]]
    holder = holder_pid(holders.pop())
    assert active in ([holder], []) and all(pid == holder for pid in active)
    assert holder in seen or len(seen) < 4

    os.kill(holder, signal.SIGKILL)
    killed_at = time.monotonic()
    while True:
        new = holder_pid(server.status()["lease_holder"])
        if new is not None and new != holder:
            break
        assert time.monotonic() - killed_at < 20, "no standby took over the lease"
        time.sleep(0.1)
    takeover = time.monotonic() - killed_at
    assert takeover < 20
    log = (server.logs_dir / "training_scheduler.log").read_text()
    assert "scheduler lease taken" in log
    assert "scheduled daily training at 02:00 (Asia/Kolkata)" in log


def test_status_answers_while_a_full_training_run_is_going(small_db: str, tmp_path: Path,
                                                          server_factory) -> None:
    pretend_trained_today(tmp_path / "logs")
    server = server_factory(small_db, workers=1)
    ready_after = server.wait_ready()
    assert ready_after < 30
    response = httpx.post(f"{server.base}/ml/training/trigger", timeout=10)
    assert response.status_code == 202, response.text
    run_id = response.json()["data"]["run_id"]
    assert response.headers["location"].endswith(run_id)
    worst = 0.0
    saw_training = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        started = time.perf_counter()
        status = server.status()
        worst = max(worst, time.perf_counter() - started)
        if status["trainer_status"]["is_training"]:
            saw_training = True
            assert status["progress"]["run_id"] == run_id
        elif saw_training:
            break
        time.sleep(0.1)
    assert saw_training, "the run never showed as training"
    assert worst < 2.0, f"status took {worst:.2f}s during training"
    run = httpx.get(f"{server.base}/ml/training/runs/{run_id}", timeout=5).json()["data"]
    assert run["status"] in ("success", "partial")
    assert run["models_trained"] == len(specs.SPECS)
