"""Runs end to end: gate, rollback, one run at a time, and kill -9 at any instant."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path

import pandas as pd
import pytest

from backend.ml.config import REPO_ROOT, Settings
from backend.ml.data import loading, schema, synthetic
from backend.ml.fleet import specs
from backend.ml.fsio import file_lock, lock_holder
from backend.ml.history import History
from backend.ml.monitoring import fresh, shift
from backend.ml.monitoring.state import ModelMonitorState, monitor_file
from backend.ml.runs import worker
from backend.ml.runs.progress import RunInProgressError, RunProgress, current_run, progress_file
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from backend.ml.statefile import Recovery
from backend.ml.training import trainer
from tests.conftest import make_database

FAST = ["scenario_analysis", "decision_support", "predictive_maintenance"]


def settings_for(tmp: Path, url: str, **extra: object) -> Settings:
    return Settings(DATABASE_URL=url, MODELS_DIR=tmp / "models", LOGS_DIR=tmp / "logs",
                    TRAINING_N_JOBS=2, **extra)


def env_for(settings: Settings) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DATABASE_URL": settings.DATABASE_URL,
            "MODELS_DIR": str(settings.MODELS_DIR), "LOGS_DIR": str(settings.LOGS_DIR),
            "TRAINING_N_JOBS": "2"}


def train_process(settings: Settings, models: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "backend.ml", "train", "--models",
                             ",".join(models)], env=env_for(settings), cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def assert_state_whole(settings: Settings) -> None:
    """Every production model verifies and loads; the history parses; none left running."""
    services = Services.from_settings(settings)
    for name in specs.MODEL_NAMES:
        version = services.store.aliases(name)["production"]
        if version is not None:
            estimator, meta = services.store.load(name, version)
            assert meta["version"] == version
    json.loads(settings.history_file.read_text())  # whole JSON, not torn
    Runner(services).recover_interrupted()
    assert not services.history.trainings(limit=1000, status="running")


def test_worse_challenger_is_kept_as_candidate_and_rollback_restores(
        small_db: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, small_db)
    services = Services.from_settings(settings)
    runner = Runner(services)
    first = runner.run(models=["scenario_analysis"], actor="cli")
    assert first["promoted"] == ["scenario_analysis"]
    spec = specs.get_spec("scenario_analysis")
    sample = loading.load_table(loading.readonly_engine(small_db), spec.table).tail(20)
    good_predictions = services.store.load(spec.name)[0].predict(sample[list(spec.features)])

    # A challenger fitted on degraded data (training labels shuffled; the newest rows, the
    # gate's holdout, keep theirs) must not replace production.
    degraded = tmp_path / "degraded.db"
    make_database(degraded, days=300, seed=42)
    engine = loading.writable_engine(f"sqlite:///{degraded}")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE dispatch_decisions SET throughput_tonnes = "
                             "(abs(random()) % 100000) / 10.0 WHERE decided_at < (SELECT "
                             "decided_at FROM dispatch_decisions ORDER BY decided_at LIMIT 1 "
                             "OFFSET (SELECT COUNT(*) * 3 / 4 FROM dispatch_decisions))")
    worse = Runner(Services.from_settings(settings_for(tmp_path, f"sqlite:///{degraded}")))
    second = worse.run(models=["scenario_analysis"], actor="cli")
    detail = second["model_details"]["advanced_models"]["scenario_analysis"]
    assert detail["promoted"] is False and "kept as candidate" in detail["decision"]
    assert services.store.aliases(spec.name)["production"] == first["model_details"][
        "advanced_models"]["scenario_analysis"]["version"]

    # A better one is promoted; rollback brings the first back and its predictions with it.
    runner.run(models=["scenario_analysis"], actor="cli",
               options={"scenario_analysis": trainer.TrainOptions(params={"max_iter": 30})})
    services.store.promote(spec.name, detail["version"], reason="test: force the bad one",
                           actor="cli")
    bad_predictions = services.store.load(spec.name)[0].predict(sample[list(spec.features)])
    assert abs(bad_predictions - good_predictions).mean() > 100
    services.store.rollback(spec.name, to="v0001", actor="cli")
    restored = services.store.load(spec.name)[0].predict(sample[list(spec.features)])
    assert (restored == good_predictions).all()
    audit = services.store.audit(name=spec.name)
    assert audit[0]["action"] == "rollback" and audit[0]["actor"] == "cli"


def test_tampered_production_is_refused_previous_serves_and_an_alert_is_recorded(
        small_db: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, small_db)
    services = Services.from_settings(settings)
    runner = Runner(services)
    runner.run(models=["decision_support"])
    runner.run(models=["decision_support"],
               options={"decision_support": trainer.TrainOptions(params={"max_iter": 50})})
    aliases = services.store.aliases("decision_support")
    if aliases["previous"] is None:  # the gate kept v2 as candidate: promote it by hand
        services.store.promote("decision_support", "v0002", reason="test", actor="cli")
    production = services.store.aliases("decision_support")["production"]
    model_file = services.store.paths("decision_support", str(production))[0]
    payload = bytearray(model_file.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    model_file.write_bytes(bytes(payload))
    served = services.store.load_serving("decision_support",
                                         on_alert=services.alerts.callback("decision_support"))
    assert served is not None and served[1]["served_as"] == "previous"
    assert served[1]["version"] != production
    alerts = services.history.alerts(limit=10)
    assert any(a["kind"] == "checksum_mismatch" and a["model"] == "decision_support"
               for a in alerts)


def test_corrupted_history_is_moved_aside_and_rebuilt(small_db: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, small_db)
    Runner(Services.from_settings(settings)).run(models=FAST[:2])
    garbage = b'{"trainings": [{"run_id": "x", "sta'
    settings.history_file.write_bytes(garbage)
    history = Services.from_settings(settings).history
    rebuilt = history.trainings()
    assert history.recovered_from is not None
    assert history.recovered_from.read_bytes() == garbage
    assert len(rebuilt) == 1 and rebuilt[0]["models_trained"] == 2
    [alert] = [a for a in history.alerts() if a["kind"] == "state_file_recovered"]
    assert alert["level"] == "critical" and alert["moved_to"] == str(history.recovered_from)


def test_two_runs_at_once_exactly_one_runs(small_db: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, small_db)
    first = train_process(settings, FAST)
    lock = settings.LOGS_DIR / "training.lock"
    deadline = time.monotonic() + 60
    while lock_holder(lock) is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    holder = lock_holder(lock)
    assert holder and "run_id=" in holder
    second = subprocess.run([sys.executable, "-m", "backend.ml", "train", "--models", FAST[0]],
                            env=env_for(settings), cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 2
    running_id = holder.split("run_id=")[1].split()[0]
    assert f"training run {running_id} is already running" in second.stderr
    out, err = first.communicate(timeout=180)
    assert first.returncode == 0, err
    with file_lock(settings.LOGS_DIR / "training.lock", timeout=0, purpose="run_id=run-x"):
        with pytest.raises(RunInProgressError, match="run-x"):
            Runner(Services.from_settings(settings)).run(models=FAST[:1])
    trainings = History(settings.history_file).trainings()
    assert [t["status"] for t in trainings] == ["success"]


@pytest.mark.slow
def test_kill_minus_nine_at_any_instant_leaves_everything_whole(tmp_path: Path) -> None:
    url = make_database(tmp_path / "crash.db", days=300)
    settings = settings_for(tmp_path, url)
    Runner(Services.from_settings(settings)).run(models=FAST)  # production exists to replace
    rng = random.Random(7)
    models_dir = settings.MODELS_DIR
    kills = 0
    # Half the kills at random times, half the instant a write is seen (saving,
    # registry moves, backups), so the saving phase is hit for sure.
    for attempt in range(12):
        synthetic.simulate(loading.writable_engine(url), days=1, seed=attempt)
        before = {p: p.stat().st_mtime_ns for p in models_dir.rglob("*")}
        proc = train_process(settings, FAST)
        if attempt % 2 == 0:
            time.sleep(rng.uniform(0.3, 4.0))
        else:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                now = {p: p.stat().st_mtime_ns for p in models_dir.rglob("*") if p.exists()}
                if any(before.get(p) != m for p, m in now.items()):
                    time.sleep(rng.uniform(0, 0.05))
                    break
                time.sleep(0.005)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        assert_state_whole(settings)
    assert kills >= 10
    final = Runner(Services.from_settings(settings)).run(models=FAST)
    assert final["status"] == "success"
    statuses = {t["status"] for t in History(settings.history_file).trainings(limit=100)}
    assert "interrupted" in statuses and "running" not in statuses


def test_backups_keep_the_replaced_set_and_retention_prunes_old_sets(
        small_db: str, tmp_path: Path) -> None:
    # A key of these settings, not the environment's: the backup must verify with it. A
    # wide tolerance: the second version is promoted, so the first one is backed up.
    settings = settings_for(tmp_path, small_db, MODEL_SIGNING_KEY="backup-key-" + "5" * 40,
                            PROMOTION_TOLERANCE=0.5)
    services = Services.from_settings(settings)
    runner = Runner(services)
    runner.run(models=["scenario_analysis"])
    assert not list(settings.LOGS_DIR.glob("backup_*"))  # nothing was replaced yet
    old = settings.LOGS_DIR / "backup_20200101_000000"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"models": {}}))
    runner.run(models=["scenario_analysis"],
               options={"scenario_analysis": trainer.TrainOptions(params={"max_iter": 400})})
    backups = sorted(settings.LOGS_DIR.glob("backup_*"))
    assert old not in backups, "a set older than BACKUP_RETENTION_DAYS must be pruned"
    assert services.store.aliases("scenario_analysis")["previous"] == "v0001"
    [backup] = backups
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["models"]["scenario_analysis"]["version"] == "v0001"
    for version in filter(None, services.store.aliases("scenario_analysis").values()):
        services.store.load("scenario_analysis", version)


def test_cli_bad_input_changes_nothing(small_db: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, small_db)
    Runner(Services.from_settings(settings)).run(models=["scenario_analysis"])
    registry = (settings.MODELS_DIR / "registry.json").read_bytes()
    history = settings.history_file.read_bytes()
    cases = [(["rollback", "nope"], "unknown model 'nope'"),
             (["rollback", "scenario_analysis", "--to", "v0042"], "v0042"),
             (["rollback", "scenario_analysis"], "no previous version"),
             (["restore", "backup_19990101_000000"], "backup_19990101_000000")]
    for args, needle in cases:
        proc = subprocess.run([sys.executable, "-m", "backend.ml", *args], env=env_for(settings),
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert (settings.MODELS_DIR / "registry.json").read_bytes() == registry
    assert settings.history_file.read_bytes() == history
    settings.history_file.write_text("this is not JSON")
    proc = subprocess.run([sys.executable, "-m", "backend.ml", "history"], env=env_for(settings),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "1 trainings" in proc.stdout
    assert list(settings.LOGS_DIR.glob("training_history.json.corrupt-*"))


def test_models_dir_that_is_not_writable_is_a_clear_error(small_db: str,
                                                         tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the models folder should be")
    settings = Settings(DATABASE_URL=small_db, MODELS_DIR=blocker / "models",
                        LOGS_DIR=tmp_path / "logs", TRAINING_N_JOBS=1)
    proc = subprocess.run([sys.executable, "-m", "backend.ml", "train", "--models",
                           "scenario_analysis"], env=env_for(settings), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert str(blocker) in proc.stderr and "Traceback" not in proc.stderr
    assert blocker.read_text() == "a file where the models folder should be"


def test_dead_runs_show_as_interrupted(small_db: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, small_db)
    history = Services.from_settings(settings).history
    history.append_training({"run_id": "run-dead", "status": "running", "trigger": "daily"})
    assert Runner(Services.from_settings(settings)).recover_interrupted() == ["run-dead"]
    assert history.get_training("run-dead")["status"] == "interrupted"



def test_a_run_over_the_slow_limit_is_alerted(small_db: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, small_db, TRAINING_SLOW_SECONDS=0.001)
    runner = Runner(Services.from_settings(settings))
    summary = runner.run(models=["scenario_analysis"])
    slow = [a for a in runner.services.history.alerts() if a["kind"] == "training_slow"]
    assert len(slow) == 1 and slow[0]["run_id"] == summary["run_id"], slow
    assert slow[0]["duration_seconds"] > slow[0]["limit_seconds"]


# ---- is a run going: current_run ------------------------------------------------------------

def test_current_run_follows_the_lock_and_the_progress(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    assert current_run(logs) is None  # no lock file at all
    lock = logs / "training.lock"
    with file_lock(lock, timeout=0, purpose="run_id=run-a daily"):
        early = current_run(logs)  # the instant before the run writes its progress
        assert early is not None and early.run_id == "run-a" and early.trigger == "daily"
        assert early.models == [] and early.total == 0 and early.started_at
        progress_file(logs).write(RunProgress(
            run_id="run-a", trigger="daily", started_at="2026-01-01T02:00:00+00:00", total=2,
            done=1, in_flight=["b"], finished=["a"], models=["a", "b"]))
        now = current_run(logs)
        assert now is not None and now.models == ["a", "b"] and now.done == 1
        progress_file(logs).write(now.model_copy(update={"run_id": "run-stale"}))
        stale = current_run(logs)  # a crash left another run's progress: the lock wins
        assert stale is not None and stale.run_id == "run-a" and stale.models == []
    assert current_run(logs) is None  # progress left behind, but nobody holds the lock


@pytest.mark.parametrize("garbage", [b"", b"\x00\xff\xfe garbage", b"run_id=", b"x" * 10000])
def test_current_run_never_raises_on_garbage(tmp_path: Path, garbage: bytes) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "training_progress.json").write_bytes(garbage or b'{"run_id": ')
    recovered: list[Recovery] = []
    lock = logs / "training.lock"
    with file_lock(lock, timeout=0):
        lock.write_bytes(garbage)  # whatever a crash or a hand left in the holder text
        progress = current_run(logs, on_recover=recovered.append)
    assert progress is not None and progress.run_id == "" and progress.models == []
    assert len(recovered) == 1 and recovered[0].moved_to.exists()


def test_runner_writes_progress_first_and_removes_it_at_the_end(small_db: str,
                                                                tmp_path: Path) -> None:
    settings = settings_for(tmp_path, small_db)
    seen: list[RunProgress | None] = []
    runner = Runner(Services.from_settings(settings))
    runner.run(models=FAST[:2], on_result=lambda _: seen.append(current_run(settings.LOGS_DIR)))
    assert [p.models if p else None for p in seen] == [FAST[:2], FAST[:2]]
    assert seen[-1] is not None and seen[-1].done == 2 and seen[-1].in_flight == []
    assert not (settings.LOGS_DIR / "training_progress.json").exists()
    assert runner.current() is None


# ---- the worker protocol --------------------------------------------------------------------

def test_the_worker_answers_one_json_line_and_errors_by_kind(small_db: str,
                                                             tmp_path: Path) -> None:
    settings = settings_for(tmp_path, small_db)
    child = worker.spawn(settings, {"job": "train", "models": ["nope"]})
    out, _ = child.communicate(timeout=120)
    [line] = out.splitlines()
    answer = json.loads(line)
    assert answer["ok"] is False and answer["error"]["kind"] == "invalid"
    assert "unknown model 'nope'" in answer["error"]["message"]
    with pytest.raises(worker.InvalidRequest, match="job must be"):
        worker.run_job(settings, {"job": "dance"})
    with file_lock(settings.LOGS_DIR / "training.lock", timeout=0, purpose="run_id=run-x"):
        with pytest.raises(RunInProgressError, match="run-x") as caught:
            Runner(Services.from_settings(settings), isolated=True).run(models=FAST[:1])
        assert caught.value.run_id == "run-x"
        started = time.monotonic()
        with pytest.raises(RunInProgressError, match="run-x"):
            Runner(Services.from_settings(settings)).start(models=FAST[:1])
        assert time.monotonic() - started < 30  # at once: not after a start-up timeout
    assert worker.parse_answer(0, 'noise\n{"ok": true, "result": 3}\n', "") == 3
    with pytest.raises(worker.WorkerError,
                       match=r"killed by SIGKILL without an answer; its last output: "
                             r"loading \| Killed"):
        worker.parse_answer(-9, "", "loading\nKilled\n")


def test_an_isolated_run_returns_the_summary_and_start_returns_once_the_lock_is_held(
        small_db: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, small_db)
    runner = Runner(Services.from_settings(settings), isolated=True)
    summary = runner.run(models=FAST[:1], actor="api")
    assert summary["status"] == "success" and summary["run_id"].startswith("run-")
    run_id, reaper = runner.start(models=FAST[:1], actor="api", run_id="run-started")
    assert run_id == "run-started"
    record = runner.services.history.get_training(run_id)
    progress = runner.progress()
    assert (progress is not None and progress.run_id == run_id) or (
        record is not None and record["status"] != "running")
    reaper.join(120)
    record = runner.services.history.get_training(run_id)
    assert record is not None and record["status"] == "success" and record["actor"] == "api"



def test_a_run_after_a_shift_on_record_holds_out_half_of_the_rows_since(
        small_db: str, tmp_path: Path) -> None:
    """A shift a check found (`shift_since` in the monitor's state) moves every later fit's
    holdout, a daily run's too, unless its caller chose the options (a retrain)."""
    settings = settings_for(tmp_path, small_db)
    runner = Runner(Services.from_settings(settings))
    name = "scenario_analysis"
    spec = specs.get_spec(name)
    table = loading.load_table(loading.open_readonly(small_db), spec.table)
    times = trainer.labelled_frame(spec, table)[0][schema.time_column(spec.table)]
    shifted_at = times.iloc[len(times) - 3 * fresh.fresh_minimum(spec)].to_pydatetime()
    with monitor_file(settings.LOGS_DIR).update() as state:
        state.root[name] = ModelMonitorState(shift_since=shifted_at.replace(tzinfo=UTC))
    runner.run(models=[name], trigger="daily", actor="scheduler")
    meta = runner.services.store.metadata(name, "v0001")
    expected = shift.shift_holdout_start(spec, times, shifted_at)
    assert expected is not None and meta["holdout_start"] == expected
    held = int((times >= pd.Timestamp(expected)).sum())
    # half of the rows since, and the rows that share the first one's time (a shift's)
    assert 3 * fresh.fresh_minimum(spec) // 2 <= held < 3 * fresh.fresh_minimum(spec) // 2 + 10
    chosen = trainer.TrainOptions("full")  # a caller's own options are followed as given
    runner.run(models=[name], trigger="retrain", actor="scheduler", options={name: chosen})
    default = trainer.time_split(trainer.labelled_frame(spec, table)[0],
                                 schema.time_column(spec.table))[1]
    assert runner.services.store.metadata(name, "v0002")["holdout_start"] == \
        default[schema.time_column(spec.table)].min().isoformat()
