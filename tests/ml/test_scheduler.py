"""The scheduler under a driven clock: daily time in a zone, DST, checks, coalescing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine

from backend.ml.config import Settings
from backend.ml.fsio import file_lock
from backend.ml.runs.clock import next_daily_time, previous_daily_time
from backend.ml.runs.progress import RunInProgressError, RunProgress
from backend.ml.runs.runner import Runner
from backend.ml.runs.scheduler import TrainingScheduler
from backend.ml.runs.services import Services
from backend.ml.runs.worker import ChildCheck


class FakeRunner(Runner):
    """A runner whose runs are recorded instead of trained (the clock is what's tested)."""

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.calls: list[str] = []
        self.busy = False
        self.fail = False

    def run(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        if self.busy:
            raise RunInProgressError("run-busy")
        if self.fail:
            raise RuntimeError("database on fire")
        self.calls.append(kwargs["trigger"])
        return {}

    def progress(self) -> RunProgress | None:
        if not self.busy:
            return None
        return RunProgress(run_id="run-busy", trigger="manual", started_at="", total=1,
                           done=0, in_flight=["x"], finished=[], models=["x"])


def make(tmp_path: Path, **env: Any) -> tuple[TrainingScheduler, FakeRunner, list[str]]:
    settings = Settings(MODELS_DIR=tmp_path / "m", LOGS_DIR=tmp_path / "l", **env)
    runner = FakeRunner(Services.from_settings(settings))
    checks: list[str] = []
    scheduler = TrainingScheduler(runner, check=lambda: checks.append("check"))
    return scheduler, runner, checks


def drive(scheduler: TrainingScheduler, traveller: Any, hours: float,
          step_minutes: int = 5) -> None:
    for _ in range(int(hours * 60 / step_minutes)):
        traveller.shift(timedelta(minutes=step_minutes))
        scheduler.tick()


def test_daily_job_fires_at_0200_kolkata(tmp_path: Path) -> None:
    start = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)  # 17:30 in Kolkata
    with time_machine.travel(start, tick=False) as traveller:
        scheduler, runner, _ = make(tmp_path, PERFORMANCE_CHECK_INTERVAL=86400 * 30)
        fired: list[datetime] = []
        original = runner.run

        def record(**kwargs: Any) -> dict[str, Any]:
            fired.append(datetime.now(UTC))
            return original(**kwargs)

        runner.run = record  # type: ignore[method-assign]
        drive(scheduler, traveller, hours=72)
    kolkata = [f.astimezone(ZoneInfo("Asia/Kolkata")) for f in fired]
    assert [k.strftime("%m-%d %H:%M") for k in kolkata] == ["11-28 02:00", "11-29 02:00",
                                                             "11-30 02:00"]
    assert runner.calls == ["daily"] * 3


@pytest.mark.parametrize("start,expected", [
    # spring forward: 02:30 does not exist on 29 March; it runs once, at 03:30 CEST
    (datetime(2026, 3, 27, 12, 0, tzinfo=UTC), ["03-28 02:30 +0100", "03-29 03:30 +0200",
                                                 "03-30 02:30 +0200"]),
    # fall back: 02:30 happens twice on 25 October; it runs once
    (datetime(2026, 10, 23, 12, 0, tzinfo=UTC), ["10-24 02:30 +0200", "10-25 02:30 +0200",
                                                  "10-26 02:30 +0100"]),
])
def test_daily_job_across_dst_in_berlin(tmp_path: Path, start: datetime,
                                        expected: list[str]) -> None:
    with time_machine.travel(start, tick=False) as traveller:
        scheduler, runner, _ = make(tmp_path, DAILY_TRAINING_TIME="02:30",
                                    TRAINING_TIMEZONE="Europe/Berlin",
                                    PERFORMANCE_CHECK_INTERVAL=86400 * 30)
        fired: list[datetime] = []
        runner.run = lambda **kw: fired.append(datetime.now(UTC)) or {}  # type: ignore
        drive(scheduler, traveller, hours=72)
    berlin = ZoneInfo("Europe/Berlin")
    assert [f.astimezone(berlin).strftime("%m-%d %H:%M %z") for f in fired] == expected


def test_next_and_previous_daily_times_are_instants() -> None:
    tz = ZoneInfo("Asia/Kolkata")
    now = datetime(2026, 11, 27, 20, 29, tzinfo=UTC)  # 01:59 in Kolkata
    assert next_daily_time(now, "02:00", tz) == datetime(2026, 11, 27, 20, 30, tzinfo=UTC)
    assert previous_daily_time(now, "02:00", tz) == datetime(2026, 11, 26, 20, 30, tzinfo=UTC)


def test_check_fires_every_interval(tmp_path: Path) -> None:
    with time_machine.travel(datetime(2026, 5, 1, 3, 0, tzinfo=UTC), tick=False) as traveller:
        scheduler, _, checks = make(tmp_path, PERFORMANCE_CHECK_INTERVAL=3600)
        drive(scheduler, traveller, hours=5)
    assert len(checks) == 5


def test_jobs_due_during_a_run_are_coalesced_into_one(tmp_path: Path) -> None:
    with time_machine.travel(datetime(2026, 5, 1, 3, 0, tzinfo=UTC), tick=False) as traveller:
        scheduler, runner, checks = make(tmp_path, PERFORMANCE_CHECK_INTERVAL=600)
        runner.busy = True
        drive(scheduler, traveller, hours=2)  # twelve checks fall due while busy
        assert checks == []
        runner.busy = False
        scheduler.tick()
        assert checks == ["check"]
        scheduler.tick()
        assert checks == ["check"]


def test_a_job_that_raises_leaves_the_thread_alive_and_is_alerted(tmp_path: Path) -> None:
    scheduler, runner, _ = make(tmp_path, PERFORMANCE_CHECK_INTERVAL=86400)
    runner.fail = True
    scheduler.max_sleep_seconds = 0.05
    scheduler.start()  # no training ever: catch-up runs at once, and raises
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while not runner.services.history.alerts() and datetime.now(UTC) < deadline:
            threading.Event().wait(0.05)
        assert scheduler.active
        [alert] = runner.services.history.alerts()
        assert alert["kind"] == "job_failed" and "database on fire" in alert["message"]
        runner.fail = False
        scheduler._run_job("daily")
        assert runner.calls == ["daily"]
    finally:
        scheduler.stop()
    assert not scheduler.active


def test_a_missed_0200_runs_once_at_start(tmp_path: Path) -> None:
    scheduler, runner, _ = make(tmp_path)
    history = runner.services.history
    yesterday = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    history.append_training({"run_id": "run-old", "timestamp": yesterday, "trigger": "daily",
                             "status": "success", "models_trained": 17})
    assert scheduler.catch_up() is True
    assert runner.calls == ["catch-up"]
    missed = [a for a in history.alerts() if a["kind"] == "missed_run"]
    assert len(missed) == 1 and "catching up" in missed[0]["message"], missed
    history.append_training({"run_id": "run-now", "timestamp": datetime.now(UTC).isoformat(),
                             "trigger": "catch-up", "status": "success", "models_trained": 17})
    assert scheduler.catch_up() is False
    assert runner.calls == ["catch-up"]


def test_only_the_lease_holder_schedules_and_a_standby_takes_over(tmp_path: Path) -> None:
    first, _, _ = make(tmp_path, PERFORMANCE_CHECK_INTERVAL=86400)
    second, _, _ = make(tmp_path, PERFORMANCE_CHECK_INTERVAL=86400)
    for s in (first, second):
        s.lease_retry_seconds = 0.1
        s.catch_up = lambda: False  # type: ignore[method-assign]
    first.start()
    try:
        _wait(lambda: first.active)
        second.start()
        threading.Event().wait(0.5)
        assert first.active and not second.active
        assert first.status()["lease_holder"] == second.status()["lease_holder"]
        first.stop()
        _wait(lambda: second.active)
        assert second.status()["scheduler_active"]
    finally:
        first.stop()
        second.stop()


def test_disabled_scheduler_never_runs(tmp_path: Path) -> None:
    scheduler, runner, _ = make(tmp_path, SCHEDULER_ENABLED=False)
    scheduler.start()
    assert not scheduler.active and scheduler.status()["enabled"] is False
    with file_lock(scheduler.lease_path, timeout=0):
        pass  # the lease was never taken


def _wait(condition: Any, seconds: float = 10.0) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=seconds)
    while not condition():
        assert datetime.now(UTC) < deadline, "condition not reached in time"
        threading.Event().wait(0.05)


def test_a_first_start_catches_up_without_a_missed_run_alert(tmp_path: Path) -> None:
    scheduler, runner, _ = make(tmp_path)
    assert scheduler.catch_up() is True
    assert runner.calls == ["catch-up"]
    assert runner.services.history.alerts() == []


class SleepingCheck(ChildCheck):
    """A check whose child is a process that ignores nothing and sleeps: stands in for a
    long check, to see that stopping the scheduler ends it."""

    def __call__(self) -> Any:
        with self._lock:
            if self._stopping:
                raise RuntimeError("stopping")
            child = self._child = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(600)"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started.set()
        try:
            child.communicate()
            return {"returncode": child.returncode}
        finally:
            with self._lock:
                self._child = None

    started = threading.Event()


def test_stopping_the_scheduler_ends_a_running_check_child(tmp_path: Path) -> None:
    settings = Settings(MODELS_DIR=tmp_path / "m", LOGS_DIR=tmp_path / "l",
                        PERFORMANCE_CHECK_INTERVAL=86400)
    runner = FakeRunner(Services.from_settings(settings))
    check = SleepingCheck(settings, grace_seconds=2)
    check.started = threading.Event()
    scheduler = TrainingScheduler(runner, check=check)
    scheduler.catch_up = lambda: False  # type: ignore[method-assign]
    scheduler.start()
    _wait(lambda: scheduler.active)
    job = threading.Thread(target=scheduler._run_job, args=("check",))
    job.start()
    assert check.started.wait(10)
    started = time.monotonic()
    scheduler.stop()
    job.join(10)
    assert not job.is_alive() and time.monotonic() - started < 8
    assert not scheduler.active
    assert runner.services.history.alerts() == []  # ended by a stop: not a job failure


def test_a_check_runs_in_a_worker_process_and_answers_in_json(small_db: str,
                                                              tmp_path: Path) -> None:
    settings = Settings(MODELS_DIR=tmp_path / "m", LOGS_DIR=tmp_path / "l",
                        DATABASE_URL=small_db)
    entry = ChildCheck(settings)()  # nothing trained: every model is "no_model"
    assert entry["check_id"].startswith("check-")
    assert {m["verdict"] for m in entry["models"].values()} == {"no_model"}
    assert Services.from_settings(settings).history.checks(limit=1)[0]["check_id"] == (
        entry["check_id"])


def test_a_run_is_full_when_it_covered_the_specs_of_its_day() -> None:
    from backend.ml.fleet import specs
    from backend.ml.runs.scheduler import covered_every_model

    every = len(specs.SPECS)
    assert covered_every_model({"models_trained": every - 1, "unchanged": []})  # fewer specs then
    assert not covered_every_model({"models_trained": 1, "unchanged": [],
                                    "models": ["delay_prediction"]})
    assert covered_every_model({"models_trained": every})  # a previous release's full run
    assert not covered_every_model({"models_trained": every - 1})
