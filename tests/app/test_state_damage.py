"""Every JSON state file, damaged four ways: the service starts, no endpoint answers 500,
the file is moved aside and rebuilt, and exactly one critical alert reaches a real SMTP
server. A rebuilt registry names the production versions it named before."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from backend.ml.config import Settings
from backend.ml.registry.store import ModelStore
from backend.ml.runs.progress import RunProgress
from tests.app.conftest import CHECK, TRAINED, ClientFactory
from tests.peers import SMTPServer

DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda good: good[: max(1, len(good) // 2)],
    "emptied": lambda good: b"",
    "wrong_shape": lambda good: b'["a list", "where an object belongs"]',
    "binary_garbage": lambda good: bytes(range(256)) * 4,
}


def valid_progress(settings: Settings) -> Path:
    path = settings.LOGS_DIR / "training_progress.json"
    progress = RunProgress(run_id="run-old", trigger="manual", started_at=CHECK["timestamp"],
                           total=1, done=0, in_flight=["scenario_analysis"], finished=[],
                           models=["scenario_analysis"])
    path.write_text(progress.model_dump_json())
    return path


def valid_monitor_state(settings: Settings) -> Path:
    path = settings.LOGS_DIR / "monitor_state.json"
    path.write_text(json.dumps({"decision_support": {"verdict": "healthy",
                                                     "version": "v0001"}}))
    return path


def valid_cooldown(settings: Settings) -> Path:
    path = settings.LOGS_DIR / "alert_cooldown.json"
    path.write_text(json.dumps({"training_failed|x": {"at": 1.0, "level": "error"}}))
    return path


STATE_FILES: dict[str, Callable[[Settings], Path]] = {
    "registry": lambda s: s.MODELS_DIR / "registry.json",
    "history": lambda s: s.history_file,
    "monitor_state": valid_monitor_state,
    "alert_cooldown": valid_cooldown,
    "progress": valid_progress,
}
ENDPOINTS = ["/health", "/ml/training/status", "/ml/training/history", "/ml/models",
             "/ml/models/decision_support", "/ml/models/decision_support/versions",
             "/ml/models/decision_support/timeline", "/ml/alerts", "/metrics", "/"]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("state_file", sorted(STATE_FILES))
def test_a_damaged_state_file_is_moved_aside_rebuilt_and_alerted_once(
        make_client: ClientFactory, smtp: SMTPServer, state_file: str, damage: str) -> None:
    damaged: dict[str, object] = {}

    def prepare(settings: Settings) -> None:
        path = STATE_FILES[state_file](settings)
        damaged["path"] = path
        damaged["production"] = production_versions(settings)
        path.write_bytes(DAMAGES[damage](path.read_bytes()))

    client = make_client(prepare, **smtp.env(ALERT_COOLDOWN_SECONDS=3600))
    for url in ENDPOINTS:
        response = client.get(url)
        assert response.status_code < 500, (url, response.text)
    predict = client.post("/ml/models/decision_support/predict", json={"records": [{}]})
    assert predict.status_code < 500, predict.text
    path = damaged["path"]
    assert isinstance(path, Path)
    aside = list(path.parent.glob(path.name + ".corrupt-*"))
    assert len(aside) == 1, aside
    json.loads(path.read_bytes())  # rebuilt, and readable again
    settings = client.app.state.settings  # type: ignore[attr-defined]
    assert production_versions(settings) == damaged["production"]
    client.app.state.services.alerts.flush(10)  # type: ignore[attr-defined]
    subjects = [m["Subject"] for m in smtp.inbox.messages]
    assert len(subjects) == 1 and "CRITICAL state_file_recovered" in subjects[0], subjects
    body = smtp.inbox.messages[0].get_body(("plain",)).get_content()
    assert path.name in body and aside[0].name in body


def production_versions(settings: Settings) -> dict[str, str | None]:
    store = ModelStore(settings.MODELS_DIR)
    return {name: store.aliases(name)["production"] for name in TRAINED}
