"""The API on a small trained setup: five fast models trained once per session, copied
into a fresh folder for each app so tests that train or roll back do not see each other."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.app.main import create_app
from backend.ml.config import Settings, get_settings
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from backend.ml.training.trainer import TrainOptions

# Fast to fit on the small database; one of each task (regression, classification,
# anomaly); supplier_performance is trained twice so it has a previous version.
TRAINED = ["scenario_analysis", "decision_support", "predictive_maintenance",
           "supplier_performance", "anomaly_detection"]
API_KEY = "test-key-0123456789"
# One check entry in the shape backend.ml.monitoring.check writes.
CHECK = {
    "check_id": "check-20261101T030000Z-ab12", "timestamp": "2026-11-01T03:00:00+00:00",
    "models": {
        "decision_support": {"version": "v0001", "threshold": 0.62, "samples": 140,
                             "live_score": 0.71, "verdict": "healthy",
                             "drift": {"max_psi": 0.31,
                                       "top_features": [["stock_level_pct", 0.31]]}},
        "scenario_analysis": {"version": "v0001", "threshold": 0.58, "samples": 12,
                              "verdict": "insufficient_fresh_data", "needed": 100},
    },
}


def settings_for(root: Path, database_url: str, **extra: Any) -> Settings:
    # Training fans out to loky worker processes (n_jobs=2), as in production. In-process
    # fits (n_jobs=1) in a server thread were up to 10x slower on a busy 2-core machine:
    # OpenMP teams in several threads oversubscribe the cores.
    values: dict[str, Any] = {"DATABASE_URL": database_url, "MODELS_DIR": root / "models",
                              "LOGS_DIR": root / "logs", "TRAINING_N_JOBS": 2,
                              "SCHEDULER_ENABLED": False, **extra}
    return Settings(**values)


@pytest.fixture(scope="session")
def trained_root(small_db: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    runner = Runner(Services.from_settings(settings_for(root, small_db)))
    first = runner.run(models=TRAINED)
    assert first["status"] == "success", first["errors"]
    # Another seed (the same fit on these rows): the same data and parameters again would
    # leave production unchanged, with no second version.
    runner.run(models=["supplier_performance"],
               options={"supplier_performance": TrainOptions(params={"random_state": 1})})
    runner.services.history.append_check(CHECK)
    # Alerts raised while setting up must not silence the same alerts in the tests.
    (root / "logs" / "alert_cooldown.json").unlink(missing_ok=True)
    return root


def fresh_copy(trained_root: Path, dest: Path) -> Path:
    for part in ("models", "logs"):
        shutil.copytree(trained_root / part, dest / part)
    return dest


def build_app(settings: Settings) -> FastAPI:
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return app


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(trained_root: Path, small_db: str,
                tmp_path: Path) -> Iterator[ClientFactory]:
    """`make_client(prepare=None, **settings)`: a started app on a fresh copy of the trained
    setup; `prepare(settings)` runs before start-up."""
    numbers = itertools.count()
    with ExitStack() as stack:
        def make(prepare: Callable[[Settings], object] | None = None,
                 **extra: Any) -> TestClient:
            root = fresh_copy(trained_root, tmp_path / f"app{next(numbers)}")
            settings = settings_for(root, small_db, **extra)
            if prepare is not None:
                prepare(settings)
            return stack.enter_context(TestClient(build_app(settings)))

        yield make


@pytest.fixture(scope="module")
def shared_client(trained_root: Path, small_db: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One started app per module for tests that only read."""
    root = fresh_copy(trained_root, tmp_path_factory.mktemp("shared"))
    with TestClient(build_app(settings_for(root, small_db))) as client:
        yield client


def app_settings(client: TestClient) -> Settings:
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    return settings


def ok(response: Any, code: int = 200) -> Any:
    """The `data` of a success envelope, after checking the status code and envelope."""
    assert response.status_code == code, response.text
    body = response.json()
    assert set(body) == {"status", "data"} and body["status"] == "success", body
    return body["data"]


def error(response: Any, code: int) -> dict[str, Any]:
    """The `error` of an error envelope, after checking the status code and envelope."""
    assert response.status_code == code, response.text
    body = response.json()
    assert set(body) == {"status", "error"} and body["status"] == "error", body
    assert body["error"]["code"] == code and body["error"]["message"], body
    result: dict[str, Any] = body["error"]
    return result
