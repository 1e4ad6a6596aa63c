"""State written by the previous release's own code (tests/ml/fixtures/release_1: two
versions of fuel_consumption, a registry with the audit inside it, a backup set, a
history, the alert cooldown, the monitor's state and a run's progress) still loads, and
is upgraded at the next write without losing anything. Its versions were stored before
models were signed: they are refused until the operator signs them once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from backend.ml.alerts.service import Cooldown
from backend.ml.config import Settings
from backend.ml.history import History
from backend.ml.monitoring.health import read_fleet
from backend.ml.monitoring.state import read_state
from backend.ml.registry.backups import list_backups, restore_backup
from backend.ml.registry.rotation import sign_versions
from backend.ml.registry.store import ModelStore, SignatureError, StoreError
from backend.ml.runs.progress import current_run, progress_file

FIXTURE = Path(__file__).parent / "fixtures" / "release_1"
NAME = "fuel_consumption"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "state")
    return tmp_path / "state"


def test_versions_aliases_and_audit_load_and_the_audit_moves_out_at_the_next_write(
        state: Path) -> None:
    store = ModelStore(state / "models")
    assert store.aliases(NAME) == {"production": "v0001", "previous": "v0002"}
    with pytest.raises(SignatureError, match="sign --trust-existing"):
        store.load(NAME)
    assert {r["result"] for r in sign_versions(store, trust_existing=True)
            if r["name"] == NAME} == {"signed (trusted as found)"}
    estimator, meta = store.load(NAME)
    assert meta["version"] == "v0001" and hasattr(estimator, "predict")
    assert [(v["version"], v["state"]) for v in store.versions(NAME)] == [
        ("v0002", "previous"), ("v0001", "production")]
    before = store.audit(None)
    assert [(m["action"], m["to"]) for m in reversed(before)] == [
        ("promote", "v0001"), ("promote", "v0002"), ("rollback", "v0001")]

    store.rollback(NAME, actor="cli", reason="first write by this release")
    registry = json.loads((state / "models" / "registry.json").read_text())
    assert "audit" not in registry or registry["audit"] == []
    lines = (state / "models" / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["reason"] == "first write by this release"
    assert store.audit(None)[1:] == before
    assert store.aliases(NAME) == {"production": "v0002", "previous": "v0001"}


def test_the_backup_set_lists_and_restores(state: Path) -> None:
    [backup] = list_backups(state / "logs")
    assert backup["models"] == {NAME: "v0001"}
    store = ModelStore(state / "models")
    sign_versions(store, trust_existing=True)
    store.rollback(NAME, to="v0002", actor="cli")
    with pytest.raises(StoreError, match="--trust-existing"):
        restore_backup(state / "models", Path(backup["path"]), key=None, actor="cli")
    restored = restore_backup(state / "models", Path(backup["path"]), key=None, actor="cli",
                              trust_unsigned=True)
    assert restored["models"][NAME]["version"] == "v0001"
    assert store.aliases(NAME)["production"] == "v0001"


def test_history_cooldown_monitor_state_and_progress_load(state: Path) -> None:
    logs = state / "logs"
    history = History(logs / "training_history.json")
    assert history.model_versions(NAME)[0]["version"] == "v0001"
    assert [a["kind"] for a in history.alerts()] == ["drift_detected"]

    [stamp] = json.loads((logs / "alert_cooldown.json").read_text()).values()
    cooldown = Cooldown(3600, path=logs / "alert_cooldown.json", clock=lambda: stamp + 10)
    assert cooldown.claim("drift_detected", NAME, "warning") is False  # still cooling down
    assert cooldown.claim("drift_detected", NAME, "critical") is True  # a graver one passes

    entry = read_state(logs).of(NAME)
    assert entry.verdict == "healthy" and entry.version is None and entry.ab is not None

    old = progress_file(logs).read()
    assert old.run_id == "run-fixture-2"
    assert set(old.models) == {"fuel_consumption", "delay_prediction"}  # in flight + done
    assert current_run(logs) is None  # nobody holds the training lock


def test_every_model_has_a_state_on_the_previous_release_files(state: Path) -> None:
    settings = Settings(MODELS_DIR=state / "models", LOGS_DIR=state / "logs")
    fleet = {s.name: s for s in read_fleet(ModelStore(state / "models"), settings)}
    assert fleet[NAME].production is not None and fleet[NAME].error is None
    assert fleet[NAME].health.state.value in ("healthy", "below_threshold")
    assert fleet["delay_prediction"].health.state.value == "no_version"
