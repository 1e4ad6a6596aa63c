"""Bad input changes nothing: after any 4xx, the registry and the history are byte-identical."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from backend.ml.fleet.specs import get_spec
from tests.app.conftest import API_KEY, ClientFactory, app_settings
from tests.app.test_models import ROLLBACK

AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = {"content-type": "application/json"}
# (method, path, keyword arguments): every one must answer 4xx.
BAD: list[tuple[str, str, dict[str, Any]]] = [
    ("post", "/ml/training/trigger", {}),
    ("post", "/ml/training/trigger", {"headers": {"Authorization": "Bearer nope"}}),
    ("post", "/ml/training/trigger?models=nope", {"headers": AUTH}),
    ("post", "/ml/training/trigger?models=,", {"headers": AUTH}),
    ("post", "/ml/training/trigger?wait=maybe", {"headers": AUTH}),
    ("get", "/ml/training/runs/run-nope", {}),
    ("get", "/ml/training/history?limit=0", {}),
    ("get", "/ml/training/history?model=nope", {}),
    ("get", "/ml/training/history?since=soon", {}),
    ("get", "/ml/alerts?offset=-1", {}),
    ("get", "/ml/models/nope", {}),
    ("get", "/ml/models/nope/versions", {}),
    ("post", f"/ml/models/{ROLLBACK}/rollback", {}),
    ("post", "/ml/models/nope/rollback", {"headers": AUTH}),
    ("post", f"/ml/models/{ROLLBACK}/rollback", {"headers": AUTH, "json": {"version": "v0099"}}),
    ("post", f"/ml/models/{ROLLBACK}/rollback", {"headers": AUTH, "json": {"version": "v0002"}}),
    ("post", f"/ml/models/{ROLLBACK}/rollback", {"headers": AUTH, "json": {"version": "x"}}),
    ("post", f"/ml/models/{ROLLBACK}/rollback", {"headers": {**AUTH, **JSON},
                                                 "content": b"{not json"}),
    ("post", "/ml/models/decision_support/rollback", {"headers": AUTH}),
    ("post", "/ml/models/delay_prediction/rollback", {"headers": AUTH}),
    ("post", "/ml/models/decision_support/predict", {"json": {"records": [{"yard": 1}]}}),
    ("post", "/ml/models/decision_support/predict", {"json": {"records": []}}),
    ("post", "/ml/models/decision_support/predict", {"headers": JSON, "content": b"[{"}),
    ("post", "/ml/models/decision_support/predict", {"json": {"records": [{}],
                                                              "version": "v0077"}}),
    ("post", "/ml/models/delay_prediction/predict", {"json": {"records": [
        dict.fromkeys(get_spec("delay_prediction").features)]}}),
    ("delete", "/ml/models", {}),
    ("get", "/ml/nothing", {}),
]


def snapshot(client: TestClient) -> dict[Path, bytes]:
    settings = app_settings(client)
    files = [settings.MODELS_DIR / "registry.json", settings.history_file,
             *sorted(settings.MODELS_DIR.rglob("v*.json")),
             *sorted(settings.MODELS_DIR.rglob("v*.skops"))]
    return {path: path.read_bytes() for path in files}


def test_every_4xx_leaves_registry_history_and_versions_untouched(
        make_client: ClientFactory) -> None:
    client = make_client(ML_API_KEY=API_KEY)
    before = snapshot(client)
    for method, path, kwargs in BAD:
        response = client.request(method.upper(), path, **kwargs)
        assert 400 <= response.status_code < 500, (method, path, response.text)
        assert response.json()["status"] == "error", (method, path)
    after = snapshot(client)
    assert list(after) == list(before)
    for file, content in before.items():
        assert after[file] == content, file
