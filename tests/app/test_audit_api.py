"""GET /ml/models/{name}/production?at=...: the version serving then, from the audit; and
the start-up check of the audit chain (one alert, and the service serves)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from fastapi.testclient import TestClient

from backend.ml.config import Settings
from backend.ml.registry.signing import signer_for
from backend.ml.registry.store import ModelStore
from tests.app.conftest import build_app, error, ok, settings_for
from tests.ml.test_store import NAME, fit, result

T1 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
T2 = T1 + timedelta(days=1)
KEY = "audit-api-test-key-0123456789abcdef"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A store with v0001 promoted at T1 and v0002 at T2 (no database needed)."""
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'absent.db'}",
                            MODEL_SIGNING_KEY=KEY)
    store = ModelStore(settings.MODELS_DIR, signer=signer_for(settings))
    for i, slope in enumerate((100.0, -100.0)):
        store.save(result(fit(slope)), run_id=f"r{i}")
    for moment, version, reason in ((T1, "v0001", "first"), (T2, "v0002", "better")):
        with time_machine.travel(moment, tick=False):
            store.promote(NAME, version, reason=reason, actor="cli")
    return settings


def test_production_at_a_time(settings: Settings) -> None:
    url = f"/ml/models/{NAME}/production"
    with TestClient(build_app(settings)) as client:
        data = ok(client.get(url, params={"at": "2026-03-02T09:00:00+05:30"}))
        assert (data["model"], data["version"], data["since"]) == (NAME, "v0001",
                                                                   T1.isoformat())
        assert data["move"]["reason"] == "first" and data["move"]["from"] is None
        assert ok(client.get(url, params={"at": T2.isoformat()}))["version"] == "v0002"
        assert ok(client.get(url, params={"at": "2027-01-01T00:00:00Z"}))["version"] == "v0002"
        assert "before its first promotion" in error(
            client.get(url, params={"at": "2026-03-02T01:59:59Z"}), 404)["message"]
        assert "offset" in error(client.get(url, params={"at": "2026-03-03T00:00:00"}),
                                 422)["message"]
        error(client.get(url, params={"at": "yesterday"}), 422)
        error(client.get(url), 422)
        error(client.get("/ml/models/not_a_model/production",
                         params={"at": T2.isoformat()}), 404)


def test_a_broken_chain_alerts_once_at_start_up_and_the_service_serves(
        settings: Settings) -> None:
    audit = settings.MODELS_DIR / "audit.jsonl"
    lines = audit.read_text().splitlines()
    entry = json.loads(lines[0])
    audit.write_text("".join(line + "\n" for line in
                             [json.dumps({**entry, "reason": "edited"}), *lines[1:]]))
    for _ in range(2):  # a restart within the cooldown does not alert again
        with TestClient(build_app(settings)) as client:
            services = client.app.state.services  # type: ignore[attr-defined]
            assert ok(client.get(f"/ml/models/{NAME}"))["aliases"]["production"] == "v0002"
    kinds = [a["kind"] for a in services.history.alerts(50)]
    assert kinds.count("audit_chain_broken") == 1
    [alert] = [a for a in services.history.alerts(50) if a["kind"] == "audit_chain_broken"]
    assert alert["level"] == "critical" and "audit.jsonl line 1" in alert["message"]
