"""The trigger answers at once and never lies: the lock is taken before any worker process
exists, a 202 names a run already on record, a 409 names the running run, and a worker
that dies is on record as failed with its error."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from backend.ml.fsio import file_lock
from backend.ml.runs.launcher import Launcher, Spare
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from tests.app.conftest import ClientFactory, app_settings, error, fresh_copy, ok, settings_for
from tests.app.test_training import wait_for_run
from tests.e2e.servers import Server

FAST = "supplier_performance"  # the quickest fit of the trained set
TRIGGERS = 50


async def fire(base: str, count: int) -> list[tuple[int, float, dict[str, object]]]:
    """`count` triggers at once: (status, seconds until answered, body) each."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        go = asyncio.Event()

        async def one() -> tuple[int, float, dict[str, object]]:
            await go.wait()
            started = time.perf_counter()
            response = await client.post(f"/ml/training/trigger?models={FAST}")
            return response.status_code, time.perf_counter() - started, response.json()

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await asyncio.sleep(0.2)  # every task waits at the start line
        go.set()
        return await asyncio.gather(*tasks)


def test_fifty_concurrent_triggers_get_one_202_and_49_409s_each_within_a_second(
        trained_root: Path, small_db: str, tmp_path: Path) -> None:
    root = fresh_copy(trained_root, tmp_path / "state")
    server = Server(root, small_db, workers=4, SCHEDULER_ENABLED="false")
    try:
        server.wait_ready()
        # Every worker is up (the first answers while the others still import): the bound
        # is on answers, not on start-up.
        serving: set[int] = set()
        deadline = time.monotonic() + 60
        while len(serving) < 4:
            assert time.monotonic() < deadline, f"only workers {serving} answered"
            with httpx.Client(base_url=server.base, timeout=30) as fresh:
                serving.add(fresh.get("/ml/training/status").json()["data"]["served_by"])
        answers = asyncio.run(fire(server.base, TRIGGERS))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [202] + [409] * (TRIGGERS - 1), statuses
        slowest = max(seconds for _, seconds, _ in answers)
        assert slowest < 1.0, sorted(seconds for _, seconds, _ in answers)[-5:]
        [accepted] = [body["data"] for status, _, body in answers if status == 202]
        run_id = accepted["run_id"]  # type: ignore[index]
        for status, _, body in answers:
            if status == 409:
                refused = body["error"]
                assert refused["run_id"] == run_id and refused["trigger"] == "manual", refused
                assert refused["started_at"] and run_id in refused["message"], refused
        # on record and shown from the instant of the 202, whichever worker is asked
        run = httpx.get(f"{server.base}/ml/training/runs/{run_id}", timeout=5).json()["data"]
        assert run["run_id"] == run_id and run["status"] in ("running", "success"), run
        status = server.status()
        if run["status"] == "running" and status["progress"] is not None:
            assert status["progress"]["run_id"] == run_id
            assert status["progress"]["models"] == [FAST]
        deadline = time.monotonic() + 120
        while run["status"] == "running":
            assert time.monotonic() < deadline, run
            time.sleep(0.1)
            run = httpx.get(f"{server.base}/ml/training/runs/{run_id}", timeout=5).json()[
                "data"]
        assert run["status"] == "success" and run["models_trained"] == 1, run
        assert server.status()["trainer_status"]["is_training"] is False
    finally:
        server.stop()


@pytest.mark.parametrize("wait", [False, True], ids=["202", "wait"])
def test_a_worker_that_dies_at_start_is_on_record_as_failed_with_its_error(
        make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, wait: bool) -> None:
    client = make_client()
    # A broken interpreter path for every process started from now on: the worker dies
    # before it runs a line of ours, as after a botched upgrade of the virtualenv.
    monkeypatch.setenv("PYTHONHOME", str(app_settings(client).LOGS_DIR / "no-python-here"))
    response = client.post(f"/ml/training/trigger?models={FAST}&wait={str(wait).lower()}")
    if wait:
        refused = error(response, 500)
        run_id = refused["run_id"]
        assert "No module named 'encodings'" in refused["message"], refused
    else:
        run_id = ok(response, 202)["run_id"]
    run = wait_for_run(client, run_id)
    assert run["status"] == "failed", run
    assert "without an answer" in run["errors"][0], run
    assert "No module named 'encodings'" in run["errors"][0], run  # the tail of its stderr
    deadline = time.monotonic() + 5  # let go right after the failure is on record
    while ok(client.get("/ml/training/status"))["trainer_status"]["is_training"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with file_lock(app_settings(client).LOGS_DIR / "training.lock", timeout=0):
        pass
    while not any(a["kind"] == "training_failed" and run_id in a["message"]
                  for a in ok(client.get("/ml/alerts"))["alerts"]):
        assert time.monotonic() < deadline, "no training_failed alert"  # raised then
        time.sleep(0.02)


def wait_for_spare(launcher: Launcher) -> Spare:
    deadline = time.monotonic() + 60
    while not launcher.spare_ready:
        assert time.monotonic() < deadline, "no spare worker was started"
        time.sleep(0.05)
    spare = launcher.spare
    assert spare is not None
    return spare


def test_a_spare_worker_takes_the_next_run_and_a_dead_one_is_replaced(
        trained_root: Path, small_db: str, tmp_path: Path) -> None:
    settings = settings_for(fresh_copy(trained_root, tmp_path / "state"), small_db)
    launcher = Launcher(settings, keep_spare=True, first_after=0.0, again_after=0.0)
    runner = Runner(Services.from_settings(settings), isolated=True, launcher=launcher)
    try:
        spare = wait_for_spare(launcher)
        run_id, handle = runner.start(models=[FAST], actor="api")
        assert handle.child is spare.process  # the run went to the waiting worker
        assert handle.result(120)["status"] == "success"
        again = wait_for_spare(launcher)  # a new one once the run ended
        assert again is not spare
        again.process.kill()  # gone while waiting (say, the out-of-memory killer)
        again.process.wait()
        summary = runner.run(models=[FAST], actor="api")  # a worker started then
        assert summary["status"] == "success"
        records = {r["run_id"]: r["status"] for r in runner.services.history.trainings(10)}
        assert records[run_id] == records[summary["run_id"]] == "success"
    finally:
        runner.close()
    assert not launcher.spare_ready
