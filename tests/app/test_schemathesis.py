"""Property-based: generated requests against /openapi.json never get a 5xx, and every
answer conforms to the documented schema (status codes, headers, bodies)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi

from backend.app.main import create_app
from backend.ml.config import get_settings
from backend.ml.fsio import file_lock
from tests.app.conftest import API_KEY, fresh_copy, settings_for

AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Loaded from the app object, not through a request: a request would start the lifespan
# before the fixture has given the app its settings. (Not `from_fixture`: schemathesis'
# lazy loader does not run on pytest 9.) The schema does not depend on settings.
APP = create_app()
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP


@pytest.fixture(scope="module")
def api_app(trained_root: Path, small_db: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """The app on its own copy with the key set. A run "holds" the training lock all along,
    so generated triggers answer 409 instead of training the fleet again and again."""
    root = fresh_copy(trained_root, tmp_path_factory.mktemp("schemathesis"))
    settings = settings_for(root, small_db, ML_API_KEY=API_KEY)
    APP.dependency_overrides[get_settings] = lambda: settings
    with file_lock(root / "logs" / "training.lock", timeout=0,
                   purpose="run_id=run-schemathesis manual"):
        yield APP  # schemathesis starts its lifespan on the first request
        asgi.shutdown_lifespans()
    APP.dependency_overrides.clear()


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(api_app: FastAPI, case: schemathesis.Case[Any]) -> None:
    excluded = []
    if case.path.endswith("/predict"):
        # Which record fields are valid depends on the model in the path, which the schema
        # cannot say: schema-valid records are rightly refused with a 422 naming the field.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    case.call_and_validate(headers=AUTH, excluded_checks=excluded)
