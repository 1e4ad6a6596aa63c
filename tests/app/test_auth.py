"""ML_API_KEY: mutating endpoints need `Authorization: Bearer <key>`; reading stays open."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import API_KEY, ClientFactory, error, ok
from tests.app.test_models import ROLLBACK, records
from tests.app.test_training import wait_for_run

MUTATING = [f"/ml/models/{ROLLBACK}/rollback", "/ml/training/trigger?models=supplier_performance"]


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client(ML_API_KEY=API_KEY)


@pytest.mark.parametrize("path", MUTATING)
@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {API_KEY}", "Bearer ",
                                    f"Bearer {API_KEY}x", API_KEY])
def test_missing_or_wrong_key_is_401(client: TestClient, path: str,
                                     header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = client.post(path, headers=headers)
    assert "API key" in error(response, 401)["message"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert ok(client.get("/ml/training/history"))["stats"]["total_trainings"] == 2
    assert ok(client.get(f"/ml/models/{ROLLBACK}"))["aliases"]["production"] == "v0002"


def test_the_right_key_is_let_through(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert ok(client.post(MUTATING[0], headers=auth))["audit"]["actor"] == "api"
    lower = {"Authorization": f"bearer {API_KEY}"}  # the scheme is case-insensitive
    assert ok(client.post(MUTATING[0], headers=lower))["aliases"]["production"] == "v0002"
    run_id = ok(client.post(MUTATING[1], headers=auth), 202)["run_id"]
    assert wait_for_run(client, run_id)["status"] == "success"


def test_reading_and_predicting_need_no_key(client: TestClient, small_db: str) -> None:
    for path in ["/health", "/ml/training/status", "/ml/training/history", "/ml/models",
                 f"/ml/models/{ROLLBACK}", f"/ml/models/{ROLLBACK}/versions", "/ml/alerts"]:
        ok(client.get(path))
    ok(client.post(f"/ml/models/{ROLLBACK}/predict",
                   json={"records": records(small_db, ROLLBACK, 2)}))


def test_without_a_key_configured_mutations_are_open(make_client: ClientFactory) -> None:
    ok(make_client().post(MUTATING[0]))


def test_the_status_says_whether_a_key_is_needed(client: TestClient,
                                                 shared_client: TestClient) -> None:
    """The dashboard asks for the key before acting when this is true."""
    assert ok(client.get("/ml/training/status"))["api_key_required"] is True
    assert ok(shared_client.get("/ml/training/status"))["api_key_required"] is False
    assert API_KEY not in client.get("/ml/training/status").text
