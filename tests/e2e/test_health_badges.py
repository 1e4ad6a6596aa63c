"""The dashboard's badge names the state the core's health function decides, in a real
browser against a real uvicorn server, for three steps of the scripted sequence (the
API, /metrics and the CLI are checked for every step in tests/app/test_health_views.py)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from backend.ml.config import Settings
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from tests.e2e.servers import Server
from tests.e2e.test_dashboard import DESKTOP, browser, open_page  # noqa: F401 - a fixture
from tests.health_steps import MODEL, STEPS, THRESHOLDS

pytestmark = pytest.mark.slow
BROWSER_STEPS = ("degraded", "retrains exhausted", "routine nightly run")
BADGE_WORDS = {"degraded": "Degraded", "cooling_down": "Cooling down", "training": "Training"}


@pytest.fixture(scope="module")
def setup(small_db: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Server, Settings]]:
    root = tmp_path_factory.mktemp("badges")
    settings = Settings(DATABASE_URL=small_db, MODELS_DIR=root / "models",
                        LOGS_DIR=root / "logs", TRAINING_N_JOBS=2, SCHEDULER_ENABLED=False,
                        MODEL_THRESHOLDS=THRESHOLDS)
    assert Runner(Services.from_settings(settings)).run(models=[MODEL])["status"] == "success"
    server = Server(root, small_db, workers=1, SCHEDULER_ENABLED="false",
                    MODEL_THRESHOLDS=json.dumps(THRESHOLDS))
    server.wait_ready()
    yield server, settings
    server.stop()


def test_the_badge_shows_the_state_every_other_view_shows(
        setup: tuple[Server, Settings], browser: Browser) -> None:  # noqa: F811
    server, settings = setup
    for step in (s for s in STEPS if s.name in BROWSER_STEPS):
        with contextlib.ExitStack() as stack:
            step.apply(settings, stack)
            models = httpx.get(f"{server.base}/ml/models", timeout=10).json()["data"]["models"]
            [row] = [m for m in models if m["name"] == step.model]
            assert row["state"] == step.expected, (step.name, row)
            page, problems = open_page(browser, server, DESKTOP)
            badge = page.locator(f"#model-{step.model} .badge")
            expect(badge).to_have_attribute("class", f"badge state-{step.expected}")
            expect(badge).to_have_text(BADGE_WORDS[step.expected])
            assert problems == []
            page.close()
