"""Backups of the production set, encrypted or not, their restore and pruning, and the
history rebuilt from version metadata."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.fernet import Fernet
from sklearn.pipeline import Pipeline

from backend.ml.history import History
from backend.ml.registry.backups import (
    BackupError,
    backup_production,
    list_backups,
    prune_backups,
    rebuild_history,
    restore_backup,
)
from backend.ml.registry.store import ModelStore, StoreError
from tests.ml.test_store import NAME, fit, flip_byte, predict, result

OTHER = "supplier_performance"  # a second model, in another group
NOW = datetime(2026, 11, 2, 1, 59, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def estimators() -> tuple[Pipeline, Pipeline]:
    return fit(100.0), fit(-100.0)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "models", tmp_path / "logs"


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != ".registry.lock"}


def production_store(models_dir: Path, estimators: tuple[Pipeline, Pipeline]) -> ModelStore:
    """scenario_analysis v0001 previous, v0002 production; supplier_performance v0001."""
    ms = ModelStore(models_dir)
    for est in estimators:
        version = ms.save(result(est), run_id="r")["version"]
        ms.promote(NAME, version, reason="test", actor="scheduler")
    other = result(estimators[0])
    other.name = OTHER
    ms.save(other, run_id="r")
    ms.promote(OTHER, "v0001", reason="test", actor="scheduler")
    return ms


def test_backup_hard_links_the_production_set(dirs: tuple[Path, Path],
                                              estimators: tuple[Pipeline, Pipeline]) -> None:
    models_dir, logs_dir = dirs
    ms = production_store(models_dir, estimators)
    backup = backup_production(models_dir, logs_dir, [NAME, OTHER, "delay_prediction"],
                               now=NOW)
    assert backup == logs_dir / "backup_20261102_015930"
    assert [p.name for p in logs_dir.iterdir()] == [backup.name]  # no temp folder left
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["encrypted"] is False and manifest["created_at"] == NOW.isoformat()
    entry = manifest["models"][NAME]
    assert entry["version"] == "v0002" and entry["sha256"] == ms.verify(NAME, "v0002")["sha256"]
    assert entry["files"] == {"model": f"{NAME}_v0002.skops", "meta": f"{NAME}_v0002.json"}
    assert set(manifest["models"]) == {NAME, OTHER}  # delay_prediction has no production
    for kind, source in zip(("model", "meta"), ms.paths(NAME, "v0002"), strict=True):
        assert os.stat(backup / entry["files"][kind]).st_ino == os.stat(source).st_ino

    again = backup_production(models_dir, logs_dir, [NAME], now=NOW)  # same second
    assert again == logs_dir / "backup_20261102_015930_2"
    assert [b["name"] for b in list_backups(logs_dir)] == [again.name, backup.name]
    assert list_backups(logs_dir)[1]["models"] == {NAME: "v0002", OTHER: "v0001"}
    assert backup_production(models_dir, logs_dir, ["delay_prediction"], now=NOW) is None


def test_backup_leaves_out_a_production_file_that_fails_its_checksum(
        dirs: tuple[Path, Path], estimators: tuple[Pipeline, Pipeline]) -> None:
    models_dir, logs_dir = dirs
    production_store(models_dir, estimators)
    flip_byte(models_dir / OTHER / "v0001.skops")
    backup = backup_production(models_dir, logs_dir, [NAME, OTHER], now=NOW)
    assert backup is not None
    manifest = json.loads((backup / "manifest.json").read_text())
    assert set(manifest["models"]) == {NAME} and "SHA-256" in manifest["skipped"][OTHER]


def test_encrypted_backup_restores_only_with_its_key(
        dirs: tuple[Path, Path], estimators: tuple[Pipeline, Pipeline]) -> None:
    models_dir, logs_dir = dirs
    ms = production_store(models_dir, estimators)
    key = Fernet.generate_key().decode()
    backup = backup_production(models_dir, logs_dir, [NAME, OTHER], key=key, now=NOW)
    assert backup is not None
    assert sorted(p.name for p in backup.iterdir()) == sorted(
        ["manifest.json", f"{NAME}_v0002.skops.enc", f"{NAME}_v0002.json.enc",
         f"{OTHER}_v0001.skops.enc", f"{OTHER}_v0001.json.enc"])
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["encrypted"] is True
    plain = ms.paths(NAME, "v0002")[0].read_bytes()
    assert manifest["models"][NAME]["sha256"] == ms.verify(NAME, "v0002")["sha256"]
    for enc in backup.glob("*.enc"):
        data = enc.read_bytes()
        assert os.stat(enc).st_nlink == 1  # a copy, never a link to the store
        assert plain[200:264] not in data and b"sklearn" not in data and b"numpy" not in data

    # Production moves on; the backup is then the way back.
    ms.rollback(NAME, actor="cli")
    ms.prune(NAME)
    before = snapshot(models_dir)
    for wrong in (None, "", Fernet.generate_key().decode(), "not-a-key"):
        with pytest.raises(BackupError, match="key"):
            restore_backup(models_dir, backup, key=wrong, actor="cli")
        assert snapshot(models_dir) == before

    restored = restore_backup(models_dir, backup, key=key, actor="cli")
    assert restored["models"][NAME] == {"backup_version": "v0002", "version": "v0002",
                                        "written": False}  # still intact: re-used
    assert [e["model"] for e in restored["audit"]] == [NAME]  # OTHER was production already
    assert ms.audit(1)[0]["action"] == "restore" and ms.audit(1)[0]["actor"] == "cli"
    estimator, meta = ms.load(NAME)
    assert meta["version"] == "v0002"
    np.testing.assert_allclose(predict(estimator), predict(estimators[1]))


def test_restore_writes_a_new_version_when_the_backed_up_one_is_gone(
        dirs: tuple[Path, Path], estimators: tuple[Pipeline, Pipeline]) -> None:
    models_dir, logs_dir = dirs
    ms = production_store(models_dir, estimators)
    backup = backup_production(models_dir, logs_dir, [NAME], now=NOW)
    assert backup is not None
    ms.save(result(estimators[0]), run_id="r2")
    ms.promote(NAME, "v0003", reason="newer", actor="scheduler")
    ms.promote(NAME, "v0001", reason="older", actor="scheduler")
    ModelStore(models_dir, keep_candidates=0).prune(NAME)  # v0002 goes from the store
    assert ms.committed(NAME) == ["v0001", "v0003"]
    assert os.path.exists(backup / f"{NAME}_v0002.skops")  # the hard link outlives it

    restored = restore_backup(models_dir, backup, key=None, actor="api")
    assert restored["models"][NAME] == {"backup_version": "v0002", "version": "v0004",
                                        "written": True}
    estimator, meta = ms.load(NAME)
    assert meta["version"] == "v0004"
    assert meta["restored_from"] == {"backup": backup.name, "version": "v0002"}
    assert meta["sha256"] == json.loads((backup / "manifest.json").read_text())[
        "models"][NAME]["sha256"]
    np.testing.assert_allclose(predict(estimator), predict(estimators[1]))
    assert ms.aliases(NAME) == {"production": "v0004", "previous": "v0001"}


def test_restore_refuses_a_bad_checksum_and_a_missing_backup(
        dirs: tuple[Path, Path], estimators: tuple[Pipeline, Pipeline]) -> None:
    models_dir, logs_dir = dirs
    production_store(models_dir, estimators)
    backup = backup_production(models_dir, logs_dir, [NAME, OTHER], now=NOW)
    assert backup is not None
    ModelStore(models_dir).rollback(NAME, actor="cli")
    member = backup / f"{OTHER}_v0001.skops"
    tampered = bytearray(member.read_bytes())
    tampered[-10] ^= 0xFF
    member.unlink()  # a new file: the store's linked copy stays intact
    member.write_bytes(bytes(tampered))
    before = snapshot(models_dir)
    with pytest.raises(BackupError, match=f"{OTHER} v0001 fails its checksum"):
        restore_backup(models_dir, backup, key=None, actor="cli")
    assert snapshot(models_dir) == before  # NAME, checked first and fine, was not restored

    missing = logs_dir / "backup_20200101_000000"
    with pytest.raises(BackupError, match=str(missing)):
        restore_backup(models_dir, missing, key=None, actor="cli")
    assert isinstance(BackupError("x"), StoreError)


def test_prune_backups_deletes_only_older_sets(dirs: tuple[Path, Path],
                                               estimators: tuple[Pipeline, Pipeline]) -> None:
    models_dir, logs_dir = dirs
    production_store(models_dir, estimators)
    made: dict[int, Path] = {}
    for age in (0, 10, 29, 31, 90):
        backup = backup_production(models_dir, logs_dir, [NAME], now=NOW - timedelta(days=age))
        assert backup is not None
        made[age] = backup
    crashed = logs_dir / ".backup_20200101_000000.tmp-deadbeef"
    crashed.mkdir()
    (logs_dir / "training_history.json").write_text("{}")
    models_before = snapshot(models_dir)

    assert prune_backups(logs_dir, 0, now=NOW) == []  # 0: keep every set
    removed = prune_backups(logs_dir, 30, now=NOW)
    assert removed == sorted([made[31], made[90], crashed])
    assert sorted(p.name for p in logs_dir.iterdir()) == sorted(
        [made[0].name, made[10].name, made[29].name, "training_history.json"])
    assert snapshot(models_dir) == models_before
    assert ModelStore(models_dir).load(NAME)[1]["version"] == "v0002"


def test_rebuild_history_groups_versions_by_run(dirs: tuple[Path, Path],
                                                estimators: tuple[Pipeline, Pipeline]) -> None:
    models_dir, _ = dirs
    ms = ModelStore(models_dir)
    first = ms.save(result(estimators[0]), run_id="run-a")
    other = result(estimators[0], score=0.4, passed=False)
    other.name, other.group, other.metric = OTHER, "risk_decision", "accuracy"
    ms.save(other, run_id="run-a")
    ms.save(result(estimators[1], score=0.9), run_id="run-b")
    (models_dir / NAME / "v0009.joblib").write_bytes(b"orphan")  # not a version

    rebuilt = rebuild_history(models_dir)
    runs = {t["run_id"]: t for t in rebuilt["trainings"]}
    assert [t["run_id"] for t in rebuilt["trainings"]] == ["run-a", "run-b"]
    a = runs["run-a"]
    assert a["timestamp"] == first["created_at"] and a["status"] == "partial"
    assert (a["models_trained"], a["successful_models"], a["failed_models"]) == (2, 1, 1)
    assert a["avg_accuracy"] == 0.6 and a["duration_seconds"] is None
    assert a["model_details"]["advanced_models"][NAME]["version"] == "v0001"
    assert a["model_details"]["risk_decision_models"][OTHER]["passed"] is False
    assert runs["run-b"]["status"] == "success"
    assert [v["version"] for v in rebuilt["model_versions"][NAME]] == ["v0001", "v0002"]
    assert rebuilt["model_versions"][OTHER][0]["timestamp"]
    json.dumps(rebuilt)  # what the history writes


def test_a_corrupt_history_is_rebuilt_from_the_store(dirs: tuple[Path, Path],
                                                     estimators: tuple[Pipeline, Pipeline]
                                                     ) -> None:
    models_dir, logs_dir = dirs
    ms = ModelStore(models_dir)
    ms.save(result(estimators[0]), run_id="run-a")
    ms.save(result(estimators[1]), run_id="run-b")
    logs_dir.mkdir()
    (logs_dir / "training_history.json").write_bytes(b"\x00garbage")
    history = History(logs_dir / "training_history.json",
                      rebuild=lambda: rebuild_history(models_dir))
    assert {t["run_id"] for t in history.trainings()} == {"run-a", "run-b"}
    assert [v["version"] for v in history.model_versions(NAME)] == ["v0001", "v0002"]
