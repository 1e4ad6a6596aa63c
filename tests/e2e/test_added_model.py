"""A model added by one spec shows everywhere with no other change. The shipped example
(co2_weekly, real weekly data in the statsmodels wheel) is enabled by EXAMPLE_MODELS in
real processes: `ingest` brings its rows, `train` fits it, and then the API, /metrics, the
CLI, the history and the dashboard in a real browser all count one model more than the
plant's, and the scheduler's catch-up does not take the plant-only runs for missed ones."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from backend.ml.data import loading
from backend.ml.fleet import specs
from tests.e2e.servers import Server
from tests.e2e.test_dashboard import DESKTOP, browser, open_page  # noqa: F401 - a fixture
from tests.ml.test_cli import run_cli

pytestmark = pytest.mark.slow
statsmodels_co2 = pytest.importorskip("statsmodels.datasets.co2")
FLEET = len(specs.MODEL_NAMES) + 1  # the plant's models and the example


@pytest.fixture(scope="module")
def served(small_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("added")
    shutil.copy(loading.sqlite_path(small_db) or "", root / "plant.db")
    url = f"sqlite:///{root / 'plant.db'}"
    env = {"DATABASE_URL": url, "MODELS_DIR": str(root / "models"),
           "LOGS_DIR": str(root / "logs"), "EXAMPLE_MODELS": "co2_weekly",
           "TRAINING_N_JOBS": "1"}
    data = statsmodels_co2.load_pandas().data.dropna()
    (root / "co2.csv").write_text("week_ending,co2_ppm\n" + "".join(
        f"{when:%Y-%m-%d},{value}\n" for when, value in zip(data.index, data["co2"],
                                                            strict=True)))
    for args in (("ingest", "co2_weekly", str(root / "co2.csv")),
                 ("train", "--models", "co2_weekly,scenario_analysis")):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 0, proc.stderr
    server = Server(root, url, workers=1, SCHEDULER_ENABLED="false",
                    EXAMPLE_MODELS="co2_weekly")
    server.wait_ready()
    server.env = env  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_api_metrics_cli_and_history_count_the_added_model(served: Server) -> None:
    models = httpx.get(f"{served.base}/ml/models", timeout=10).json()["data"]["models"]
    assert len(models) == FLEET
    [co2] = [m for m in models if m["name"] == "co2_weekly"]
    assert co2["production_version"] == "v0001" and co2["state"] == "healthy", co2

    metrics = httpx.get(f"{served.base}/metrics", timeout=10).text
    named = set(re.findall(r'ml_model_state\{[^}]*model="([a-z_0-9]+)"', metrics))
    assert len(named) == FLEET and "co2_weekly" in named

    proc = run_cli("models", "--json", env=served.env)  # type: ignore[attr-defined]
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == FLEET

    history = httpx.get(f"{served.base}/ml/training/history", timeout=10).json()["data"]
    [run] = history["history"]["trainings"]
    assert sorted(run["models"]) == ["co2_weekly", "scenario_analysis"]  # a partial run


def test_the_dashboard_shows_the_added_model(served: Server,
                                             browser: Browser) -> None:  # noqa: F811
    page, problems = open_page(browser, served, DESKTOP)
    expect(page.locator("article.model")).to_have_count(FLEET)
    expect(page.locator("#model-co2_weekly .badge")).to_have_text("Healthy")
    expect(page.locator(".sub")).to_contain_text(f"{FLEET} logistics models")
    assert problems == []
    page.close()
