"""The dashboard in a real browser (Debian's chromium driven by Playwright) against a real
uvicorn server: it loads clean, trains, rolls back, and fits a phone's width. Screenshots
go to test-artifacts/ at the repository root."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from backend.ml.config import REPO_ROOT, Settings
from backend.ml.data import loading, synthetic
from backend.ml.fleet.specs import GROUPS, MODEL_NAMES
from backend.ml.monitoring import check as monitor
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from tests.e2e.servers import Server

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts"
# Flags for a headless run in a container: no sandbox (no user namespaces there), and none
# of the browser's own traffic (updates, sync) that could stall or reach the internet.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 360, "height": 740}
# What overflows the viewport outside any box that scrolls or clips it (which would make
# the page itself scroll sideways on a phone).
OVERFLOW_JS = """() => {
  const width = window.innerWidth;
  const contained = (el) => {
    for (let box = el.parentElement; box && box !== document.body; box = box.parentElement) {
      if (['auto', 'scroll', 'hidden'].includes(getComputedStyle(box).overflowX)) return true;
    }
    return false;
  };
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if ((r.width || r.height) && (r.right > width + 0.5 || r.left < -0.5) && !contained(el)) {
      wide.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className} ${r.left}..${r.right}`);
    }
  }
  return {scrollWidth: document.documentElement.scrollWidth, width, wide: wide.slice(0, 10)};
}"""


@pytest.fixture(scope="module")
def server(small_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on a copy of the small database, with all 17 trained once and one check on
    20 fresh days (so cards show live scores and drift). The database is copied because
    the check needs rows appended and the session's database is shared."""
    root = tmp_path_factory.mktemp("dashboard")
    source = loading.sqlite_path(small_db)
    assert source is not None
    shutil.copyfile(source, root / "logistics.db")
    url = f"sqlite:///{root / 'logistics.db'}"
    settings = Settings(DATABASE_URL=url, MODELS_DIR=root / "models", LOGS_DIR=root / "logs",
                        TRAINING_N_JOBS=2, SCHEDULER_ENABLED=False)
    runner = Runner(Services.from_settings(settings))
    assert runner.run(actor="cli")["status"] == "success"
    synthetic.simulate(loading.writable_engine(url), days=20)
    monitor.run_check(runner, backoff_seconds=0)
    server = Server(root, url, workers=1, SCHEDULER_ENABLED="false")
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the dashboard tests drive Debian's chromium; "
                    "`make test` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        # An explicit executable: Playwright never downloads a browser of its own here.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def open_page(browser: Browser, server: Server, viewport: dict[str, int],
              path: str = "/") -> tuple[Page, list[str]]:
    """A page on the dashboard, with every console error and uncaught exception recorded."""
    page = browser.new_page(viewport=viewport)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    page.goto(server.base + path)
    expect(page.locator("#conn")).to_contain_text("updated")
    return page, problems


def api(server: Server, path: str) -> Any:
    response = httpx.get(server.base + path, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def model_with_a_previous_version(server: Server) -> tuple[str, dict[str, Any]]:
    """The first model a rollback can act on, with its aliases."""
    return next((n, a) for n in MODEL_NAMES
                if (a := api(server, f"/ml/models/{n}/versions")["aliases"])
                ["previous"] is not None)


def test_page_shows_the_17_models_in_their_groups(server: Server, browser: Browser) -> None:
    page, problems = open_page(browser, server, DESKTOP)
    cards = page.locator("article.model")
    expect(cards).to_have_count(len(MODEL_NAMES))
    assert page.locator("section.group").count() == len(GROUPS)
    for name in MODEL_NAMES:
        expect(page.locator(f"#model-{name} .badge")).to_have_text("Healthy")
    expect(page.locator("#model-delay_prediction .model-facts")).to_contain_text("fresh rows")
    page.locator("#model-delay_prediction .model-head").click()
    chart = page.locator("#model-delay_prediction svg.chart")
    expect(chart).to_be_visible()
    assert chart.locator(".series-training circle").count() >= 1
    assert chart.locator(".series-live circle").count() >= 1
    expect(page.locator("#history-rows tr")).to_have_count(1)
    assert not page.locator("#banner").is_visible()
    assert problems == []
    page.close()


def test_train_now_then_roll_back_with_confirmation(server: Server, browser: Browser) -> None:
    page, problems = open_page(browser, server, DESKTOP)
    expect(page.locator("#history-rows tr")).to_have_count(1)
    page.locator("#train-now").click()
    expect(page.locator("#run-state")).to_have_text("Training", timeout=15_000)
    # the bar is full once every model is fitted; saving and promoting them follows
    progress = page.locator("#progress")
    expect(progress).to_have_attribute("aria-valuenow", "100", timeout=120_000)
    total = len(MODEL_NAMES)
    expect(page.locator("#progress-text")).to_contain_text(f"{total}/{total} models")
    expect(page.locator("#run-state")).to_have_text("Idle", timeout=60_000)
    expect(progress).to_have_attribute("data-result", "success")
    expect(page.locator("#history-rows tr")).to_have_count(2)
    expect(page.locator("#history-rows tr").first).to_contain_text("manual")

    # a model the new run promoted has a previous version to go back to
    name, aliases = model_with_a_previous_version(server)
    card = page.locator(f"#model-{name}")
    version = card.locator(".model-facts dd").first
    expect(version).to_contain_text(aliases["production"])
    card.locator(".model-head").click()
    card.locator("[data-action=rollback]").click()
    confirm = card.locator("[data-action=confirm-rollback]")
    expect(confirm).to_be_visible()
    # asking is not doing: nothing changed before the confirmation
    assert api(server, f"/ml/models/{name}/versions")["aliases"] == aliases
    confirm.click()
    expect(version).to_contain_text(aliases["previous"])
    assert api(server, f"/ml/models/{name}/versions")["aliases"]["production"] == \
        aliases["previous"]
    expect(card.locator("svg.chart .event-rollback")).to_have_count(1)
    expect(card.locator(".message")).to_contain_text("Rolled back")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert problems == []
    page.close()


def test_every_time_is_shown_in_the_training_zone_in_one_format(
        server: Server, browser: Browser) -> None:
    """The next daily run (a wall time in the zone), the next check (an instant with an
    offset), the last training and a history row: one format, in TRAINING_TIMEZONE. The
    server runs no scheduler, so its status is given a schedule on its way to the page
    (and its newest run is made a run of one model, which its history row names)."""
    status = api(server, "/ml/training/status")
    zone = ZoneInfo(status["timezone"])
    assert status["timezone"] == "Asia/Kolkata"  # the default; IST is UTC+05:30

    def scheduled(route: Route) -> None:
        response = route.fetch()
        body = response.json()
        body["data"].update(scheduler_active=True, next_run="2026-12-02 02:00:00",
                            next_check="2026-12-01T21:00:00+00:00")
        route.fulfill(response=response, json=body)

    def one_model_newest(route: Route) -> None:  # and the newest run covered one model
        response = route.fetch()
        body = response.json()
        body["data"]["history"]["trainings"][0]["models"] = ["scenario_analysis"]
        route.fulfill(response=response, json=body)

    page = browser.new_page(viewport=DESKTOP)
    page.route("**/ml/training/status", scheduled)
    page.route("**/ml/training/history?*", one_model_newest)
    page.goto(server.base + "/")
    expect(page.locator("#conn")).to_contain_text("updated")

    def fact(term: str) -> str:
        return page.locator(f"#facts dt:text-is('{term}') + dd").inner_text().strip()

    def local(iso: str) -> str:
        return f"{datetime.fromisoformat(iso).astimezone(zone):%Y-%m-%d %H:%M}"

    shown = {"Next daily run": fact("Next daily run"), "Next check": fact("Next check"),
             "Last training": fact("Last training"),
             "history": page.locator("#history-rows tr td time").first.inner_text().strip()}
    run = api(server, "/ml/training/history?limit=1")["history"]["trainings"][0]
    expected = {"Next daily run": "2026-12-02 02:00", "Next check": "2026-12-02 02:30",
                "Last training": local(status["trainer_status"]["stats"]["last_training"]),
                "history": local(run["timestamp"])}
    names = {text.removeprefix(expected[key] + " ") for key, text in shown.items()}
    assert all(text.startswith(expected[key] + " ") for key, text in shown.items()), shown
    assert len(names) == 1 and names <= {"IST", "GMT+5:30"}, shown
    rows = page.locator("#history-rows tr .models-cell")
    expect(rows.first).to_contain_text("scenario_analysis")
    for older in range(1, rows.count()):  # full runs: a count, no names
        assert "_" not in rows.nth(older).inner_text()
    page.close()


def test_a_phone_width_has_no_horizontal_overflow(server: Server, browser: Browser) -> None:
    page, problems = open_page(browser, server, PHONE, "/#model-cost_prediction")
    expect(page.locator("#model-cost_prediction svg.chart")).to_be_visible()
    expect(page.locator("article.model")).to_have_count(len(MODEL_NAMES))
    layout = page.evaluate(OVERFLOW_JS)
    assert layout["scrollWidth"] <= layout["width"], layout
    assert layout["wide"] == [], layout
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    assert problems == []
    page.close()


def test_an_unreachable_api_shows_a_banner_until_it_answers(server: Server,
                                                            browser: Browser) -> None:
    page, problems = open_page(browser, server, DESKTOP)
    page.route("**/ml/**", lambda route: route.abort())
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # poll now
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Cannot reach the API")
    expect(page.locator("article.model")).to_have_count(len(MODEL_NAMES))  # last read, kept
    page.unroute("**/ml/**")
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    expect(banner).to_be_hidden()
    # the browser reports each refused request; nothing else may go wrong
    assert [p for p in problems if "net::ERR_FAILED" not in p] == []
    page.close()


def test_with_an_api_key_the_page_asks_for_it_before_rolling_back(
        server: Server, browser: Browser) -> None:
    """A second server on the same state, with ML_API_KEY: the page knows from the status
    that a key is needed, asks before sending anything, and says so when it is refused."""
    keyed = Server(server.root, server.db_url, workers=1, SCHEDULER_ENABLED="false",
                   ML_API_KEY="dashboard-key-42")
    keyed.wait_ready()
    try:
        name, aliases = model_with_a_previous_version(keyed)
        page, problems = open_page(browser, keyed, DESKTOP)
        card = page.locator(f"#model-{name}")
        card.locator(".model-head").click()
        card.locator("[data-action=rollback]").click()
        card.locator("[data-action=confirm-rollback]").click()
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        page.locator("#key-input").fill("not-the-key")
        dialog.locator("button[value=ok]").click()
        expect(page.locator("#key-why")).to_contain_text("refused")
        assert api(keyed, f"/ml/models/{name}/versions")["aliases"] == aliases
        page.locator("#key-input").fill("dashboard-key-42")
        dialog.locator("button[value=ok]").click()
        expect(card.locator(".message")).to_contain_text("Rolled back")
        assert api(keyed, f"/ml/models/{name}/versions")["aliases"]["production"] == \
            aliases["previous"]
        # the refused key is the only error the browser reports (its own network log)
        assert [p for p in problems if "401" not in p] == [], problems
        page.close()
    finally:
        keyed.stop()
