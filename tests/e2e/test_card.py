"""A model card in a real browser against a real uvicorn server: the page renders under its
own Content-Security-Policy with no console error, and the dashboard's link opens it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from backend.ml.config import Settings
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from tests.e2e.servers import Server
from tests.e2e.test_dashboard import DESKTOP, PHONE, browser, open_page  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow
MODEL = "supplier_performance"  # one of the fastest to fit


@pytest.fixture(scope="module")
def server(small_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("card")
    settings = Settings(DATABASE_URL=small_db, MODELS_DIR=root / "models",
                        LOGS_DIR=root / "logs", TRAINING_N_JOBS=2, SCHEDULER_ENABLED=False)
    assert Runner(Services.from_settings(settings)).run(models=[MODEL])["status"] == "success"
    server = Server(root, small_db, workers=1, SCHEDULER_ENABLED="false")
    server.wait_ready()
    yield server
    server.stop()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_card_page_renders_clean(server: Server, browser: Browser,  # noqa: F811
                                 viewport: dict[str, int]) -> None:
    page = browser.new_page(viewport=viewport)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    response = page.goto(f"{server.base}/ml/models/{MODEL}/versions/v0001/card")
    assert response is not None and response.status == 200
    expect(page.locator("h1")).to_contain_text(f"{MODEL} v0001")
    expect(page.locator("h1 .state")).to_have_text("production")
    for section in ("purpose", "data", "metric", "slices", "features", "params",
                    "integrity", "aliases"):
        expect(page.locator(f"section#{section}")).to_be_visible()
    expect(page.locator("#aliases td").nth(2)).to_have_text("became production")
    # the inline style is allowed by its hash: a refused one would leave th unstyled
    weight = page.locator("th").first.evaluate("e => getComputedStyle(e).fontWeight")
    assert weight == "600"
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    assert problems == []
    page.close()


def test_dashboard_links_to_the_production_card(server: Server,
                                                browser: Browser) -> None:  # noqa: F811
    page, problems = open_page(browser, server, DESKTOP)
    link = page.locator(f"#model-{MODEL} .model-facts a.card-link")
    expect(link).to_have_text("card")
    link.click()
    page.wait_for_url(f"**/ml/models/{MODEL}/versions/v0001/card")
    expect(page.locator("h1")).to_contain_text(f"{MODEL} v0001")
    # a model never trained has no production version, so no card link
    expect(page.locator("#model-delay_prediction a.card-link")).to_have_count(0)
    assert problems == []
    page.close()
