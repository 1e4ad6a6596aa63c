"""The JSON training history: round trips, paging, stats and trends, recovery, archiving,
files written by the release before, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backend.ml import statefile
from backend.ml.history import (
    TREND_TOLERANCE,
    History,
    HistoryPermissionError,
    HistoryWriteError,
    Trend,
    score_trend,
)
from backend.ml.statefile import Recovery

FIXTURES = Path(__file__).parent / "fixtures"


def run(run_id: str, ts: str, status: str = "success", *, scores: dict[str, float] | None = None,
        successful: int | None = None, accuracy: float = 0.8, trigger: str = "daily") -> dict:
    scores = scores if scores is not None else {"delay_prediction": 0.8, "risk_assessment": 0.75}
    details: dict[str, dict] = {"prediction_models": {}, "risk_decision_models": {}}
    for name, score in scores.items():
        group = "risk_decision_models" if name.startswith("risk") else "prediction_models"
        details[group][name] = {"metric": "r2", "score": score, "baseline": 0.1,
                                "threshold": 0.7, "passed": score >= 0.7, "rows": 100}
    good = successful if successful is not None else sum(s >= 0.7 for s in scores.values())
    return {"run_id": run_id, "timestamp": ts, "trigger": trigger, "status": status,
            "models_trained": len(scores), "successful_models": good,
            "failed_models": len(scores) - good, "avg_accuracy": accuracy,
            "duration_seconds": 1.5, "errors": [], "model_details": details}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "training_history.json"


def ids(records: list[dict]) -> list[str]:
    return [r["run_id"] for r in records]


def reporting(path: Path, **options: Any) -> tuple[History, list[Recovery]]:
    """A History whose recoveries are recorded as critical alerts in that same history, the
    way the service's alert path does it; and the list of what it reported."""
    reports: list[Recovery] = []

    def report(recovery: Recovery) -> None:
        reports.append(recovery)
        history.append_alert({"level": "critical", "kind": "history_corrupt",
                              "message": recovery.message()})

    history = History(path, on_recover=report, **options)
    return history, reports


def all_entries(history: History, kind: str) -> list[dict]:
    """Every entry of a list kind, main file and archives, oldest first."""
    entries: list[dict] = []
    for year in history.archived_years():
        entries += history.archive(year)[kind]
    return entries + json.loads(history.path.read_text())[kind]


# ---- round trip, paging, filters -----------------------------------------------------------


def test_append_update_get_round_trip(path: Path) -> None:
    history = History(path)
    assert history.trainings() == [] and history.stats()["total_trainings"] == 0
    assert not path.exists()  # reading never creates the file

    stored = history.append_training(
        {"run_id": "r1", "trigger": "manual", "status": "running", "models_trained": 0})
    assert stored["run_id"] == "r1" and "timestamp" in stored
    assert History(path).get_training("r1")["status"] == "running"

    updated = history.update_training("r1", status="success", successful_models=3,
                                      models_trained=3, avg_accuracy=0.81)
    assert updated["status"] == "success"
    again = History(path).get_training("r1")
    assert again["status"] == "success" and again["avg_accuracy"] == 0.81
    assert again["trigger"] == "manual"  # untouched fields survive an update
    on_disk = json.loads(path.read_text())
    assert set(on_disk) >= {"trainings", "checks", "model_versions", "alerts"}

    generated = history.append_training({})
    assert generated["run_id"] and generated["status"] == "running"
    with pytest.raises(KeyError):
        history.update_training("nope", status="failed")
    with pytest.raises(ValueError):
        history.append_training({"run_id": "r1"})
    with pytest.raises(ValueError):
        history.update_training("r1", status="done")
    assert History(path).get_training("missing") is None

    history.add_model_version("delay_prediction", {"version": "v0001", "score": 0.8})
    history.add_model_version("delay_prediction", {"version": "v0002", "score": 0.82})
    history.add_model_version("cost_prediction", {"version": "v0001", "score": 0.7})
    assert [v["version"] for v in history.model_versions("delay_prediction")] == [
        "v0001", "v0002"]
    assert set(history.model_versions()) == {"delay_prediction", "cost_prediction"}
    assert history.model_versions("unknown") == []


def test_readers_return_copies(path: Path) -> None:
    history = History(path)
    history.append_training(run("r1", "2025-01-01T02:00:00+00:00"))
    page = history.trainings()
    page[0]["status"] = "failed"
    page[0]["model_details"]["prediction_models"].clear()
    fresh = history.trainings()[0]
    assert fresh["status"] == "success" and fresh["model_details"]["prediction_models"]


def test_newest_first_paging_and_filters(path: Path) -> None:
    history = History(path)
    history.append_training(run("a", "2025-03-01T02:00:00+00:00", "success"))
    history.append_training(run("b", "2025-03-02T02:00:00+00:00", "failed", successful=0))
    history.append_training(run("c", "2025-03-03T02:00:00", "partial"))  # naive = UTC
    history.append_training(run("d", "2025-03-04T02:00:00+00:00", "success",
                                scores={"delay_prediction": 0.9}))
    retrain = {**run("e", "2025-03-05T02:00:00+00:00", "success", scores={}),
               "trigger": "retrain", "models": ["cost_prediction"]}
    history.append_training(retrain)

    assert ids(history.trainings()) == ["e", "d", "c", "b", "a"]
    assert ids(history.trainings(limit=2)) == ["e", "d"]
    assert ids(history.trainings(limit=2, offset=2)) == ["c", "b"]
    assert ids(history.trainings(limit=2, offset=4)) == ["a"]
    assert ids(history.trainings(offset=9)) == []
    assert ids(history.trainings(status="success")) == ["e", "d", "a"]
    assert ids(history.trainings(status=["failed", "partial"])) == ["c", "b"]
    assert ids(history.trainings(model="risk_assessment")) == ["c", "b", "a"]
    assert ids(history.trainings(model="cost_prediction")) == ["e"]
    assert ids(history.trainings(model="risk_assessment", limit=1, offset=1)) == ["b"]
    assert ids(history.trainings(since="2025-03-03T02:00:00+00:00")) == ["e", "d", "c"]
    assert ids(history.trainings(since=datetime(2025, 3, 4, tzinfo=UTC))) == ["e", "d"]
    assert ids(history.trainings(since="2025-03-03T07:30:00+05:30")) == ["e", "d", "c"]
    with pytest.raises(ValueError):
        history.trainings(since="yesterday")
    with pytest.raises(ValueError):
        history.trainings(limit=-1)

    for hour in range(3):
        history.append_check({"timestamp": f"2025-03-05T0{hour}:05:00+00:00",
                              "results": {"delay_prediction": {"score": 0.8}} if hour != 1
                              else {"cost_prediction": {"score": 0.7}}})
    assert [c["timestamp"][11:13] for c in history.checks()] == ["02", "01", "00"]
    assert [c["timestamp"][11:13] for c in history.checks(model="delay_prediction")] == [
        "02", "00"]
    assert len(history.checks(limit=1, offset=2)) == 1

    first = history.append_alert({"level": "warning", "kind": "below_threshold",
                                  "message": "x", "timestamp": "2025-03-01T00:00:00+00:00"})
    second = history.append_alert({"level": "critical", "kind": "retrain_exhausted",
                                   "message": "y"})
    assert first["id"] and second["id"] and first["id"] != second["id"]
    assert "timestamp" in second
    assert [a["kind"] for a in history.alerts()] == ["retrain_exhausted", "below_threshold"]
    assert [a["kind"] for a in history.alerts(since="2025-03-02T00:00:00+00:00")] == [
        "retrain_exhausted"]
    kept = history.append_alert({"id": "given", "message": "z"})
    assert kept["id"] == "given"


# ---- stats ----------------------------------------------------------------------------------


def test_stats_success_rate_and_zero_model_runs(path: Path) -> None:
    history = History(path)
    history.append_training(run("1", "2025-01-01T02:00:00+00:00", accuracy=0.80))
    history.append_training(run("2", "2025-01-02T02:00:00+00:00", accuracy=0.90))
    # Status says success but nothing trained: never counted as a successful run.
    history.append_training(run("3", "2025-01-03T02:00:00+00:00", "success", scores={},
                                successful=0, accuracy=0.0))
    history.append_training(run("4", "2025-01-04T02:00:00+00:00", "failed", successful=0,
                                accuracy=0.0))
    history.append_training(run("5", "2025-01-05T02:00:00+00:00", "partial", accuracy=0.70))
    history.append_training({"run_id": "6", "timestamp": "2025-01-06T02:00:00+00:00",
                             "status": "running"})
    stats = history.stats()
    assert stats["total_trainings"] == 5  # the running one is not finished yet
    assert stats["successful_trainings"] == 2
    assert stats["success_rate"] == 40.0
    assert stats["running_trainings"] == 1
    assert stats["total_models_trained"] == 2 + 2 + 0 + 2 + 2
    assert stats["avg_accuracy"] == round((0.8 + 0.9 + 0.7) / 3, 4)  # runs with no model: out
    assert stats["last_training"] == "2025-01-05T02:00:00+00:00"
    assert stats["by_status"] == {"success": 3, "failed": 1, "partial": 1}

    history.append_training(run("7", "2025-01-07T02:00:00+00:00"))
    assert History(path).stats()["success_rate"] == round(100 * 3 / 6, 2) == 50.0


def test_stats_per_model_trend(path: Path) -> None:
    history = History(path)
    rising = [0.68, 0.70, 0.72, 0.74, 0.76, 0.78, 0.80]
    falling = [0.92, 0.90, 0.88, 0.86, 0.84, 0.82, 0.80]
    for day, (up, down) in enumerate(zip(rising, falling, strict=True), start=1):
        scores = {"delay_prediction": up, "risk_assessment": down, "fuel_consumption": 0.8}
        history.append_training(run(f"r{day}", f"2025-02-0{day}T02:00:00+00:00", scores=scores))
    trend = history.stats()["per_model"]
    assert trend["delay_prediction"]["scores"] == [0.70, 0.72, 0.74, 0.76, 0.78, 0.80]  # last 6
    assert trend["delay_prediction"]["direction"] == "improving"
    assert trend["delay_prediction"]["latest"] == 0.80
    assert trend["risk_assessment"]["direction"] == "declining"
    assert trend["risk_assessment"]["group"] == "risk_decision_models"
    assert trend["fuel_consumption"]["direction"] == "stable"


def test_score_trend_fits_a_line_through_the_last_six_scores() -> None:
    assert score_trend([]).direction == "stable"
    assert score_trend([0.9, 0.1, 0.5]) == score_trend([]) == Trend("stable", 0.0)  # too few
    falling = score_trend([0.80, 0.79, 0.78, 0.77])  # a fitted drop of exactly the tolerance
    assert falling.direction == "declining" and falling.change == -TREND_TOLERANCE
    assert score_trend([0.80, 0.81, 0.82, 0.83]).direction == "improving"
    assert score_trend([0.80, 0.795, 0.79, 0.781]).direction == "stable"  # -0.0186
    assert score_trend([0.80, 0.80, 0.80, 0.70, 0.80, 0.80]).direction == "stable"  # one dip
    # Only the last six count: an old jump does not make a flat run "improving".
    assert score_trend([0.1, 0.2, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]).change == 0.0
    assert score_trend([0.8, float("nan"), 0.77, 0.74, 0.71]).direction == "declining"


def test_score_trend_change_is_the_least_squares_line() -> None:
    numpy = pytest.importorskip("numpy")
    rng = numpy.random.default_rng(7)
    for n in range(4, 10):
        scores = list(rng.uniform(0.5, 0.9, size=n))
        window = scores[-6:]
        slope = numpy.polyfit(numpy.arange(len(window)), window, 1)[0]
        assert score_trend(scores).change == pytest.approx(slope * (len(window) - 1), abs=1e-8)


# ---- interrupted runs -------------------------------------------------------------------------


def test_mark_interrupted(path: Path) -> None:
    history = History(path)
    history.append_training(run("done", "2025-01-01T02:00:00+00:00"))
    history.append_training({"run_id": "dead", "status": "running"})
    history.append_training({"run_id": "alive", "status": "running"})
    history.append_training({"run_id": "unknown", "status": "running"})

    def is_running(run_id: str) -> bool:
        if run_id == "unknown":
            raise RuntimeError("cannot tell")
        return run_id == "alive"

    assert history.mark_interrupted(is_running) == ["dead"]
    dead = History(path).get_training("dead")
    assert dead["status"] == "interrupted" and "interrupted" in dead["note"]
    assert dead["interrupted_at"]
    assert history.get_training("alive")["status"] == "running"
    assert history.get_training("unknown")["status"] == "running"
    assert history.get_training("done")["status"] == "success"
    before = path.read_bytes()
    assert history.mark_interrupted(is_running) == []
    assert path.read_bytes() == before  # nothing changed, nothing written
    assert history.stats()["by_status"] == {"success": 1, "interrupted": 1}


# ---- corrupt files ----------------------------------------------------------------------------


def rebuilt() -> dict:
    return {"trainings": [run("from-meta", "2025-01-01T02:00:00+00:00")],
            "model_versions": {"delay_prediction": [{"version": "v0001", "score": 0.8}]}}


def corrupt_variants(path: Path) -> dict[str, bytes]:
    good = History(path)
    good.append_training(run("lost", "2025-01-01T02:00:00+00:00"))
    whole = path.read_bytes()
    path.unlink()
    return {"garbage": b"\x00\xff\xfegarbage{{{", "truncated": whole[: len(whole) // 2],
            "empty": b"", "wrong_shape": b'[{"trainings": 1}]',
            "bad_list": b'{"trainings": {"a": 1}, "model_versions": {}}'}


@pytest.mark.parametrize("variant", ["garbage", "truncated", "empty", "wrong_shape", "bad_list"])
def test_corrupt_file_moved_aside_and_rebuilt(path: Path, variant: str) -> None:
    payload = corrupt_variants(path)[variant]
    path.write_bytes(payload)
    history, reports = reporting(path, rebuild=rebuilt)

    page = history.trainings()  # a reader finds it and recovers
    assert [t["run_id"] for t in page] == ["from-meta"]
    aside = history.recovered_from
    assert aside is not None and aside.parent == path.parent
    assert aside.name.startswith("training_history.json.corrupt-")
    assert aside.read_bytes() == payload  # byte for byte, never emptied
    assert [p.name for p in path.parent.glob("*.corrupt-*")] == [aside.name]
    assert [r.moved_to for r in reports] == [aside]
    alerts = history.alerts()
    assert alerts[0]["level"] == "critical" and alerts[0]["kind"] == "history_corrupt"
    assert aside.name in alerts[0]["message"] and alerts[0]["id"]
    assert history.model_versions("delay_prediction")[0]["version"] == "v0001"
    assert json.loads(path.read_text())["trainings"][0]["run_id"] == "from-meta"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_corrupt_file_found_by_a_writer_and_rebuild_that_raises(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"trainings": [{"run_id": "x"')

    def broken() -> dict:
        raise RuntimeError("model metadata unreadable")

    history, _ = reporting(path, rebuild=broken)
    history.append_training({"run_id": "new", "status": "running"})
    assert [t["run_id"] for t in history.trainings()] == ["new"]
    assert history.recovered_from is not None
    assert history.recovered_from.read_bytes() == b'{"trainings": [{"run_id": "x"'
    assert [a["kind"] for a in history.alerts()] == ["history_corrupt"]
    # A second, separate reader finds a good file: nothing more is moved aside.
    assert History(path).recovered_from is None and History(path).trainings()
    assert len(list(path.parent.glob("*.corrupt-*"))) == 1


def test_recovery_keeps_archive_totals_and_skips_archived_runs(path: Path) -> None:
    history = History(path, limits={"trainings": 5})
    for day in range(1, 9):
        history.append_training(run(f"r{day}", f"2024-12-0{day}T02:00:00+00:00"))
    assert history.archived_years() == [2024]
    path.write_bytes(b"garbage")

    def rebuild() -> dict:  # model metadata knows every run, archived or not
        return {"trainings": [run(f"r{d}", f"2024-12-0{d}T02:00:00+00:00") for d in range(1, 9)]}

    recovered, _ = reporting(path, limits={"trainings": 5}, rebuild=rebuild)
    stats = recovered.stats()
    assert recovered.alerts()[0]["kind"] == "history_corrupt"
    assert stats["total_trainings"] == 8  # archived ones counted once, not twice
    assert sorted(t["run_id"] for t in all_entries(recovered, "trainings")) == sorted(
        f"r{d}" for d in range(1, 9))


DAMAGE = ("truncated", "emptied", "wrong_shape", "bad_totals", "garbage")


def damaged(whole: bytes, kind: str) -> bytes:
    return {"truncated": whole[: len(whole) // 2], "emptied": b"",
            "wrong_shape": b'{"trainings": {"r1": {}}, "model_versions": []}',
            "bad_totals": b'{"trainings": [], "archive": {"trainings": {"count": "many"}}}',
            "garbage": bytes(range(255, -1, -1)) * 4}[kind]


def eight_runs() -> dict:
    """What the model metadata knows: every run, archived or not."""
    return {"trainings": [run(f"r{d}", f"2024-12-0{d}T02:00:00+00:00",
                              trigger="retrain" if d % 3 == 0 else "daily")
                          for d in range(1, 9)]}


def read_at_once(readers: list[History], read: Callable[[History], Any]) -> list[Any]:
    """`read` on every reader from its own thread, all let go at the same instant."""
    start = threading.Barrier(len(readers))
    results: list[Any] = [None] * len(readers)

    def work(i: int) -> None:
        start.wait()
        try:
            results[i] = read(readers[i])
        except BaseException as exc:  # handed to the test thread
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(readers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_main_file_is_recovered_once_by_concurrent_readers(path: Path, kind: str) -> None:
    limits = {"trainings": 5, "alerts": 2}
    history = History(path, limits=limits)
    history.extend(**eight_runs())  # r1-r4 go to the 2024 archive
    for i in range(4):
        history.append_alert({"kind": f"k{i % 2}", "timestamp": "2024-12-09T00:00:00+00:00"})
    assert history.archived_years() == [2024]
    stats, totals = history.stats(), history.metrics_totals()
    archived_alerts = history.archive(2024)["alerts"]
    whole = path.read_bytes()

    for round_ in range(3):  # the race again, over a freshly damaged file each time
        payload = damaged(whole, kind)
        path.write_bytes(payload)
        reports: list[Recovery] = []
        readers = [History(path, limits=limits, rebuild=eight_runs, on_recover=reports.append)
                   for _ in range(4)]
        seen = read_at_once(readers, lambda h: (h.stats(), h.trainings(limit=100)))

        assert len(reports) == 1, reports
        recovery = reports[0]
        assert recovery.path == path and recovery.moved_to.read_bytes() == payload
        assert len(list(path.parent.glob("training_history.json.corrupt-*"))) == round_ + 1
        assert [r.recovered_from for r in readers if r.recovered_from] == [recovery.moved_to]
        # Every reader sees the rebuilt history; archived runs are counted once, from the
        # year file, and the recent ones come from the rebuild.
        assert all(s == stats for s, _ in seen)
        assert all([t["run_id"] for t in page] == ["r8", "r7", "r6", "r5"]
                   for _, page in seen)
        after = History(path).metrics_totals()
        assert {k: v for k, v in after.items() if k != "alerts_by_kind"} == {
            k: v for k, v in totals.items() if k != "alerts_by_kind"}
        assert after["alerts_by_kind"] == {"k0": 1, "k1": 1} and len(archived_alerts) == 2
        assert recovery.rebuilt.startswith("4 recent trainings") and "(4 trainings)" in (
            recovery.message())


def test_missing_main_file_is_rebuilt_once_by_concurrent_readers(path: Path) -> None:
    history = History(path, limits={"trainings": 5})
    for day in range(1, 9):
        history.append_training(run(f"r{day}", f"2024-12-0{day}T02:00:00+00:00"))
    stats = history.stats()
    path.unlink()
    reports: list[Recovery] = []
    readers = [History(path, limits={"trainings": 5}, rebuild=eight_runs,
                       on_recover=reports.append) for _ in range(4)]
    seen = read_at_once(readers, History.stats)
    assert len(reports) == 1 and "missing" in reports[0].message()
    assert all(s["total_trainings"] == stats["total_trainings"] == 8 for s in seen)
    assert not list(path.parent.glob("*.corrupt-*"))
    assert all(r.recovered_from is None for r in readers)


@pytest.mark.parametrize("archives", [True, False], ids=["with-archives", "no-archives"])
def test_readers_meeting_a_recovery_half_way_see_the_rebuilt_history(
        path: Path, monkeypatch: pytest.MonkeyPatch, archives: bool) -> None:
    """Between moving the damaged file aside and writing its replacement the file is not
    there; a reader arriving then waits for the replacement instead of reading nothing."""
    history = History(path, limits={"trainings": 5 if archives else 50})
    history.extend(**eight_runs())
    assert bool(history.archived_years()) is archives
    real_move_aside = statefile.move_aside

    def slow_move_aside(target: Path, **options: bool) -> Path:
        aside = real_move_aside(target, **options)
        time.sleep(0.05)
        return aside

    monkeypatch.setattr(statefile, "move_aside", slow_move_aside)
    path.write_bytes(b"{")
    reports: list[Recovery] = []
    readers = [History(path, rebuild=eight_runs, on_recover=reports.append) for _ in range(5)]

    def staggered(reader: History) -> int:
        time.sleep(0.01 * readers.index(reader))
        return int(reader.stats()["total_trainings"])

    assert read_at_once(readers, staggered) == [8] * 5
    assert len(reports) == 1


def test_a_failing_report_does_not_undo_the_recovery(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"{")

    def broken(recovery: Recovery) -> None:
        raise RuntimeError("mail server down")

    history = History(path, rebuild=rebuilt, on_recover=broken)
    assert [t["run_id"] for t in history.trainings()] == ["from-meta"]
    assert len(history.recoveries) == 1 and history.recovered_from is not None
    assert [t["run_id"] for t in History(path).trainings()] == ["from-meta"]


def test_damaged_year_archive_is_moved_aside_when_written_and_reported(path: Path) -> None:
    history, reports = reporting(path, limits={"trainings": 5})
    for day in range(1, 7):
        history.append_training(run(f"r{day}", f"2024-12-0{day}T02:00:00+00:00"))
    archive = history.archive_path(2024)
    assert [t["run_id"] for t in history.archive(2024)["trainings"]] == ["r1", "r2"]
    archive.write_bytes(b"\x00garbage")

    # A reader skips it: nothing is moved, nothing reported.
    assert [t["run_id"] for t in history.trainings(archived=True)] == ["r6", "r5", "r4", "r3"]
    assert history.archive(2024)["trainings"] == [] and reports == []
    assert archive.read_bytes() == b"\x00garbage"

    # The next spill into that year moves it aside and starts a new one.
    for day in (7, 8):
        history.append_training(run(f"r{day}", f"2024-12-0{day}T02:00:00+00:00"))
    assert len(reports) == 1
    recovery = reports[0]
    assert recovery.path == archive and recovery.moved_to.read_bytes() == b"\x00garbage"
    assert recovery.moved_to.name.startswith("training_history.2024.json.corrupt-")
    assert [t["run_id"] for t in history.archive(2024)["trainings"]] == ["r3", "r4"]
    assert history.stats()["total_trainings"] == 8  # the lost file's runs are still counted
    assert history.alerts()[0]["message"] == recovery.message()
    assert history.recovered_from is None  # the main file was never damaged


# ---- archiving --------------------------------------------------------------------------------


def test_archiving_moves_old_entries_to_year_files_and_keeps_totals(path: Path) -> None:
    history = History(path, limits={"trainings": 5, "checks": 5, "alerts": 5,
                                    "model_versions": 3})
    stamps = [f"2023-12-{d:02d}T02:00:00+00:00" for d in range(25, 32)] + [
        f"2024-01-{d:02d}T02:00:00+00:00" for d in range(1, 9)]
    history.append_training({"run_id": "stuck", "timestamp": "2023-12-01T00:00:00+00:00",
                             "status": "running"})
    for i, ts in enumerate(stamps):
        status = "failed" if i % 5 == 0 else "success"
        history.append_training(run(f"r{i:02d}", ts, status,
                                    successful=0 if status == "failed" else None))
        history.append_check({"timestamp": ts, "results": {"delay_prediction": {}}})
        history.append_alert({"timestamp": ts, "message": f"a{i}"})
        history.add_model_version("delay_prediction", {"version": f"v{i:04d}", "timestamp": ts})

    assert history.archived_years() == [2023, 2024]
    main = json.loads(path.read_text())
    assert len(main["trainings"]) <= 5 and len(main["checks"]) <= 5
    assert len(main["model_versions"]["delay_prediction"]) <= 3
    assert main["trainings"][0]["run_id"] == "stuck"  # a running run is never archived
    y2023 = history.archive(2023)
    assert y2023["trainings"] and all(t["timestamp"].startswith("2023")
                                      for t in y2023["trainings"])
    assert all(t["timestamp"].startswith("2024") for t in history.archive(2024)["trainings"])
    assert history.archive(1999) == {"trainings": [], "checks": [], "model_versions": {},
                                     "alerts": []}

    # Nothing dropped, nothing doubled, order kept.
    expected = [f"r{i:02d}" for i in range(len(stamps))]
    assert [t["run_id"] for t in all_entries(history, "trainings") if t["run_id"] != "stuck"] \
        == expected
    assert [c["timestamp"] for c in all_entries(history, "checks")] == stamps
    assert [a["message"] for a in all_entries(history, "alerts")] == [
        f"a{i}" for i in range(len(stamps))]
    versions = [v for y in history.archived_years()
                for v in history.archive(y)["model_versions"]["delay_prediction"]]
    versions += history.model_versions("delay_prediction")
    assert [v["version"] for v in versions] == [f"v{i:04d}" for i in range(len(stamps))]

    stats = History(path).stats()
    assert stats["total_trainings"] == len(stamps)
    assert stats["successful_trainings"] == len(stamps) - 3
    assert stats["success_rate"] == round(100 * 12 / 15, 2)
    assert stats["running_trainings"] == 1
    assert stats["last_training"] == stamps[-1]

    assert len(history.trainings(limit=100)) <= 5
    deep = [t["run_id"] for t in history.trainings(limit=100, archived=True)]
    # The main file newest first (the still-running run stays there), then the archives.
    assert [i for i in deep if i != "stuck"] == list(reversed(expected))
    assert deep.count("stuck") == 1
    assert [t["run_id"] for t in history.trainings(limit=2, offset=6, archived=True)] == [
        expected[-6], expected[-7]]
    assert history.get_training("r00")["timestamp"] == stamps[0]  # found in the archive
    assert history.get_training("r00", archived=False) is None
    assert [t["run_id"] for t in history.trainings(since="2024-01-07T00:00:00+00:00",
                                                   archived=True)] == ["r14", "r13"]
    assert stat.S_IMODE(history.archive_path(2023).stat().st_mode) == 0o640


def test_since_reaches_into_the_previous_years_archive_across_time_zones(path: Path) -> None:
    history = History(path, limits=1)
    history.append_training(run("r1", "2023-12-31T23:45:00+00:00"))
    history.append_training(run("r2", "2024-01-02T02:00:00+00:00"))
    history.append_training(run("r3", "2024-01-03T02:00:00+00:00"))
    assert history.archived_years() == [2023, 2024]
    since = "2024-01-01T05:00:00+05:30"  # = 2023-12-31T23:30Z
    assert [t["run_id"] for t in history.trainings(since=since, archived=True)] == [
        "r3", "r2", "r1"]
    assert [t["run_id"] for t in history.trainings(since=since)] == ["r3"]


def test_main_file_deleted_while_archives_exist_recounts_them(path: Path) -> None:
    history = History(path, limits={"trainings": 5})
    for day in range(1, 9):
        history.append_training(run(f"r{day}", f"2024-12-0{day}T02:00:00+00:00"))
    path.unlink()
    fresh, reports = reporting(path, limits={"trainings": 5})
    stats = fresh.stats()
    assert stats["total_trainings"] == len(all_entries(fresh, "trainings")) < 8
    assert stats["successful_trainings"] == stats["total_trainings"]
    assert len(reports) == 1 and "missing" in reports[0].message()
    assert fresh.alerts()[0]["message"] == reports[0].message()
    assert fresh.recovered_from is None and path.exists()
    assert not list(path.parent.glob("*.corrupt-*"))


def test_crash_between_archive_and_main_write_doubles_nothing(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history = History(path, limits={"trainings": 5})
    for day in range(1, 6):
        history.append_training(run(f"r{day}", f"2024-05-0{day}T02:00:00+00:00"))
    real_write = statefile.atomic_write_bytes

    def crash_on_main(target: Path, payload: bytes, **kwargs: Any) -> None:
        if target == path:
            raise OSError(5, "simulated crash")
        real_write(target, payload, **kwargs)

    monkeypatch.setattr(statefile, "atomic_write_bytes", crash_on_main)
    with pytest.raises(HistoryWriteError):
        history.append_training(run("r6", "2024-05-06T02:00:00+00:00"))
    assert history.archive(2024)["trainings"]  # the archive got written, the main file not
    monkeypatch.setattr(statefile, "atomic_write_bytes", real_write)

    history.append_training(run("r6", "2024-05-06T02:00:00+00:00"))
    history.append_training(run("r7", "2024-05-07T02:00:00+00:00"))
    ids = [t["run_id"] for t in all_entries(history, "trainings")]
    assert ids == [f"r{d}" for d in range(1, 8)]
    assert history.stats()["total_trainings"] == 7


def test_extend_appends_in_bulk_with_archiving(path: Path) -> None:
    history = History(path, limits=4)
    history.extend(trainings=[run(f"r{i}", f"202{i % 3}-06-01T02:00:00+00:00")
                              for i in range(9)],
                   checks=[{"timestamp": "2021-01-01T00:00:00+00:00"}] * 6,
                   alerts=[{"message": "m"}],
                   model_versions={"delay_prediction": [{"version": "v1"}, {"version": "v2"}]})
    assert history.stats()["total_trainings"] == 9
    assert len(all_entries(history, "trainings")) == 9
    assert len(all_entries(history, "checks")) == 6
    assert history.alerts()[0]["id"]
    with pytest.raises(ValueError):
        history.extend(trainings=[run("r8", "2022-06-01T02:00:00+00:00")])


# ---- files written by the release before ---------------------------------------------------


def test_reads_a_history_written_by_the_release_before(tmp_path: Path) -> None:
    """`fixtures/history_v1` is a main file and a 2024 archive as the release before wrote
    them (limits 5 trainings, 4 checks, 3 alerts, 2 versions), with what that release read
    back from them."""
    source = FIXTURES / "history_v1"
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("training_history.json", "training_history.2024.json"):
        shutil.copy(source / name, logs / name)
    path = logs / "training_history.json"
    old_file = json.loads(path.read_text())
    expected = json.loads((source / "reads_by_that_release.json").read_text())
    reports: list[Recovery] = []
    history = History(path, on_recover=reports.append)

    assert history.trainings(limit=1000, archived=True) == expected["trainings"]
    assert history.trainings(limit=1000) == expected["main_trainings"]
    assert history.checks(limit=1000, archived=True) == expected["checks"]
    assert history.alerts(limit=1000, archived=True) == expected["alerts"]
    assert history.model_versions() == expected["model_versions"]
    assert history.archived_years() == expected["archived_years"] == [2024]
    assert history.archive(2024) == expected["archive_2024"]
    assert json.loads(json.dumps(history.metrics_totals())) == expected["metrics_totals"]
    stats, old_stats = history.stats(), expected["stats"]
    trends, old_trends = stats.pop("per_model"), old_stats.pop("per_model")
    assert stats == old_stats
    for trend in (*trends.values(), *old_trends.values()):  # the trend rule changed since
        del trend["direction"]
    assert trends == old_trends
    assert reports == [] and not list(logs.glob("*.corrupt-*"))

    # It goes on from there: the archived totals are kept as they were.
    history.update_training("r10", status="failed", successful_models=0)
    again = History(path)
    assert again.stats()["total_trainings"] == old_stats["total_trainings"] + 1
    assert again.stats()["by_status"]["failed"] == old_stats["by_status"]["failed"] + 1
    assert json.loads(path.read_text())["archive"] == old_file["archive"]

    # Its year archive alone recounts to the totals that release kept.
    path.unlink()
    reports = []
    History(path, on_recover=reports.append).stats()
    assert len(reports) == 1 and json.loads(path.read_text())["archive"] == old_file["archive"]


# ---- concurrency, permissions ---------------------------------------------------------------


def _append_many(path: str, worker: int, count: int) -> None:
    history = History(Path(path), limits={"trainings": 30})
    for i in range(count):
        history.append_training(run(f"w{worker}-{i:02d}", f"2025-0{worker + 1}-01T02:00:00+00:00"))
        history.append_alert({"message": f"w{worker}-{i}"})


def test_concurrent_appends_from_processes_lose_nothing(path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(path), w, 25)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    history = History(path, limits={"trainings": 30})
    ids = [t["run_id"] for t in all_entries(history, "trainings")]
    assert sorted(ids) == sorted(f"w{w}-{i:02d}" for w in range(4) for i in range(25))
    assert len(history.alerts(limit=1000)) == 100
    assert history.stats()["total_trainings"] == 100
    for worker in range(4):  # each process's own appends stay in order
        own = [i for i in ids if i.startswith(f"w{worker}-")]
        assert own == sorted(own)


def test_files_are_created_0640(path: Path) -> None:
    history = History(path, limits={"trainings": 1})
    history.append_training(run("a", "2024-01-01T02:00:00+00:00"))
    history.append_training(run("b", "2025-01-01T02:00:00+00:00"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(history.archive_path(2024).stat().st_mode) == 0o640


def test_parent_is_a_file_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("not a folder")
    history = History(blocker / "training_history.json")
    with pytest.raises(HistoryWriteError, match="training_history.json"):
        history.append_training({"run_id": "x"})
    assert blocker.read_text() == "not a folder"


def _attempt_as_nobody(path: str, result: Any) -> None:
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    except OSError as exc:
        result.put(("cannot-drop", str(exc)))
        return
    try:  # is the folder really closed to this process?
        probe = Path(path).parent / "probe"
        probe.write_text("x")
        probe.unlink()
        result.put(("writable", ""))
        return
    except OSError:
        pass
    try:
        History(Path(path)).append_training({"run_id": "intruder"})
        result.put(("no-error", ""))
    except Exception as exc:  # reported to the test
        result.put((type(exc).__name__, f"{isinstance(exc, PermissionError)}|{exc}"))


@pytest.mark.parametrize("lock_exists", [False, True], ids=["no-lock-file", "lock-writable"])
def test_unwritable_folder_raises_and_leaves_file_unchanged(lock_exists: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="history-ro-", dir="/tmp"))
    try:
        path = folder / "training_history.json"
        History(path).append_training(run("kept", "2025-01-01T02:00:00+00:00"))
        before = path.read_bytes()
        if lock_exists:  # the lock opens: the failure comes at the write itself
            (folder / "training_history.lock").chmod(0o666)
        else:
            (folder / "training_history.lock").unlink()
        path.chmod(0o644)
        folder.chmod(0o755)
        if os.geteuid() == 0:  # root ignores modes: try it as an unprivileged process
            context = multiprocessing.get_context("fork")
            queue = context.Queue()
            child = context.Process(target=_attempt_as_nobody, args=(str(path), queue))
            child.start()
            child.join(timeout=60)
            outcome, detail = queue.get(timeout=5)
            if outcome in ("cannot-drop", "writable"):
                pytest.skip(f"cannot make the folder unwritable honestly here: {outcome} {detail}")
            assert outcome == "HistoryPermissionError", (outcome, detail)
            is_permission, message = detail.split("|", 1)
        else:
            folder.chmod(0o555)
            with pytest.raises(HistoryPermissionError) as caught:
                History(path).append_training({"run_id": "intruder"})
            message = str(caught.value)
            is_permission = str(isinstance(caught.value, PermissionError))
        assert str(path) in message and "Permission denied" in message
        assert is_permission == "True"  # callers may catch PermissionError
        assert path.read_bytes() == before
        assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) == [
            "training_history.json"]
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)
