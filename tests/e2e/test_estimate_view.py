"""The dashboard shows an estimate as "estimated", never in the Score row, and charts it
as its own dashed series with the realized score beside it, in a real browser against a
real server (the world: tests/estimate_world.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from backend.ml.data import loading, synthetic
from backend.ml.monitoring.check import Monitor
from tests.e2e.servers import Server
from tests.e2e.test_dashboard import DESKTOP, browser, open_page  # noqa: F401 - a fixture
from tests.estimate_world import CLASSIFIER, build, restore_labels, withhold_labels

pytestmark = pytest.mark.slow
HIGH = {CLASSIFIER: 0.95}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An estimate realized once its labels arrived, then a newer one still pending."""
    world = build(tmp_path_factory.mktemp("estimate_view"))

    def check(thresholds: dict[str, float]) -> None:
        Monitor(world.runner(MODEL_THRESHOLDS=thresholds), backoff_seconds=0).run_check()

    saved = withhold_labels(world)
    check(HIGH)
    restore_labels(world, saved)
    synthetic.simulate(loading.writable_engine(world.url), days=10)
    check({})  # labels decide; the usual threshold keeps it from retraining
    withhold_labels(world)
    check(HIGH)
    running = Server(world.root, world.url, workers=1, SCHEDULER_ENABLED="false",
                     MODEL_THRESHOLDS=json.dumps(HIGH))
    running.wait_ready()
    yield running
    running.stop()


def test_the_card_labels_the_estimate_and_the_chart_draws_it_apart(
        server: Server, browser: Browser) -> None:  # noqa: F811
    page, problems = open_page(browser, server, DESKTOP)
    card = page.locator(f"#model-{CLASSIFIER}")
    expect(card.locator(".badge")).to_have_text("Estimated below threshold")
    facts = card.locator(".model-facts")
    expect(facts).to_contain_text("Estimated")
    expect(facts.locator(".estimated")).to_contain_text("rows awaiting labels")
    score_row = facts.locator("dt:text-is('Score') + dd")
    expect(score_row).not_to_contain_text("estimated")
    card.locator(".model-head").click()
    chart = card.locator("svg.chart")
    expect(chart).to_be_visible()
    expect(chart.locator(".series-estimated polyline")).to_have_count(1)
    expect(chart.locator(".series-estimated circle")).to_have_count(2)
    expect(chart.locator(".series-realized circle")).to_have_count(1)
    expect(card.locator(".legend")).to_contain_text("Estimated (labels pending)")
    expect(card.locator(".legend")).to_contain_text("Realized once labels arrived")
    assert problems == []
    page.close()
