"""Forged and altered model files are never deserialized, by any path that loads a model:
predict, the check, training, rollback and restore. A forgery here is what an attacker
with write access to MODELS_DIR (but not the signing key) can make: a pickle whose code
would create a marker file, with its SHA-256, size and format written into the metadata.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.ml.monitoring.check import Monitor
from backend.ml.registry.backups import backup_production, restore_backup
from backend.ml.registry.store import ModelStore, SignatureError, StoreError, sha256_hex
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from tests.app.conftest import ClientFactory, app_settings, error, ok
from tests.ml.test_store import flip_byte, spy_on_deserializers

NAME = "supplier_performance"  # v0001 previous, v0002 production in the trained setup
RECORD = {"fleet_size": 40, "shipments_handled": 300, "on_time_rate": 0.9,
          "damage_rate": 0.01, "price_deviation": 0.02, "disputes": 1}


class Marker:
    """Unpickling this creates `path`: proof that a forged file's code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


def forge(models_dir: Path, version: str, marker: Path, *, keep_signature: bool) -> None:
    """Replace `version` of NAME by a code-running pickle, its metadata made to match."""
    meta_path = models_dir / NAME / f"{version}.json"
    meta = json.loads(meta_path.read_text())
    payload = pickle.dumps(Marker(marker))
    (models_dir / NAME / f"{version}.skops").unlink(missing_ok=True)
    (models_dir / NAME / f"{version}.joblib").write_bytes(payload)
    meta.update(format="joblib", sha256=sha256_hex(payload), size_bytes=len(payload))
    if not keep_signature:
        meta.pop("signature", None)
        meta.pop("key_id", None)
    meta_path.write_text(json.dumps(meta))


def registry_bytes(models_dir: Path) -> bytes:
    return (models_dir / "registry.json").read_bytes()


@pytest.fixture(params=["unsigned", "stale_signature"])
def keep_signature(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "stale_signature")


def test_predict_refuses_a_forged_production_and_serves_previous(
        make_client: ClientFactory, small_db: str, tmp_path: Path,
        keep_signature: bool) -> None:
    client = make_client()
    models = app_settings(client).MODELS_DIR
    marker = tmp_path / "predict-ran-code"
    forge(models, "v0002", marker, keep_signature=keep_signature)
    record = {"records": [RECORD]}
    served = ok(client.post(f"/ml/models/{NAME}/predict", json=record))
    assert served["version"] == "v0001" and served["served_as"] == "previous"
    message = error(client.post(f"/ml/models/{NAME}/predict",
                                json={**record, "version": "v0002"}), 409)["message"]
    assert "v0002" in message and ("not signed" in message or "does not match" in message)
    assert not marker.exists()
    alerts = ok(client.get("/ml/alerts"))["alerts"]
    assert [a["level"] for a in alerts if a["kind"] == "signature_invalid"] == ["critical"]


def test_rollback_to_a_forged_version_is_refused(make_client: ClientFactory,
                                                 tmp_path: Path) -> None:
    client = make_client()
    models = app_settings(client).MODELS_DIR
    marker = tmp_path / "rollback-ran-code"
    forge(models, "v0001", marker, keep_signature=False)
    before = registry_bytes(models)
    message = error(client.post(f"/ml/models/{NAME}/rollback"), 409)["message"]
    assert "sign --trust-existing" in message
    assert registry_bytes(models) == before and not marker.exists()


def test_check_and_training_never_load_a_forged_production(make_client: ClientFactory,
                                                           tmp_path: Path) -> None:
    client = make_client()
    settings = app_settings(client)
    marker = tmp_path / "loop-ran-code"
    forge(settings.MODELS_DIR, "v0002", marker, keep_signature=True)
    runner = Runner(Services.from_settings(settings))
    checked = Monitor(runner, backoff_seconds=0).run_check()
    assert NAME in checked["models"]
    result = runner.run(models=[NAME])
    assert result["status"] in ("success", "partial")
    assert not marker.exists()


def test_restore_refuses_a_forged_backup(make_client: ClientFactory, tmp_path: Path) -> None:
    client = make_client()
    settings = app_settings(client)
    models, logs = settings.MODELS_DIR, settings.LOGS_DIR
    backup = backup_production(models, logs, [NAME])
    assert backup is not None
    marker = tmp_path / "restore-ran-code"
    manifest = json.loads((backup / "manifest.json").read_text())
    entry = manifest["models"][NAME]
    payload = pickle.dumps(Marker(marker))
    meta = json.loads((backup / entry["files"]["meta"]).read_text())
    meta.update(format="joblib", sha256=sha256_hex(payload), size_bytes=len(payload))
    meta_bytes = json.dumps(meta).encode()
    for name in entry["files"].values():
        (backup / name).unlink()  # hard links to the store's files: never write through them
    (backup / entry["files"]["model"]).write_bytes(payload)
    (backup / entry["files"]["meta"]).write_bytes(meta_bytes)
    entry.update(sha256=meta["sha256"], json_sha256=sha256_hex(meta_bytes))
    (backup / "manifest.json").write_text(json.dumps(manifest))
    before, versions = registry_bytes(models), sorted((models / NAME).iterdir())
    with pytest.raises(StoreError, match="does not match its metadata"):
        restore_backup(models, backup, key=None, actor="cli")
    assert registry_bytes(models) == before and sorted((models / NAME).iterdir()) == versions
    ModelStore(models).load(NAME)  # production still loads
    assert not marker.exists()


def test_a_signed_file_with_one_byte_flipped_is_never_deserialized(
        make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    models = app_settings(client).MODELS_DIR
    flip_byte(models / NAME / "v0002.skops")
    loaded = spy_on_deserializers(monkeypatch)
    message = error(client.post(f"/ml/models/{NAME}/predict",
                                json={"records": [RECORD], "version": "v0002"}), 409)["message"]
    assert "SHA-256" in message and loaded == []
    served = ok(client.post(f"/ml/models/{NAME}/predict", json={"records": [RECORD]}))
    assert served["served_as"] == "previous" and len(loaded) == 1  # v0001 only


def test_a_changed_key_refuses_every_version_naming_the_setting_and_deletes_nothing(
        make_client: ClientFactory) -> None:
    client: TestClient = make_client(MODEL_SIGNING_KEY="another-key-" + "0" * 32)
    settings = app_settings(client)
    files = {p: p.read_bytes() for p in sorted(settings.MODELS_DIR.rglob("v*"))}
    message = error(client.post(f"/ml/models/{NAME}/predict",
                                json={"records": [RECORD], "version": "v0001"}), 409)["message"]
    assert "MODEL_SIGNING_KEY" in message
    error(client.post(f"/ml/models/{NAME}/predict", json={"records": [RECORD]}), 503)
    store = Services.from_settings(settings).store
    for name in ("scenario_analysis", "decision_support", NAME):
        with pytest.raises(SignatureError, match="MODEL_SIGNING_KEY"):
            store.load(name)
    store.prune(NAME)
    assert {p: p.read_bytes() for p in sorted(settings.MODELS_DIR.rglob("v*"))} == files
