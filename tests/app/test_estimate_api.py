"""An estimate is shown under its own names everywhere a score is: API, /metrics, timeline.

A real check on a world whose newest shipments' labels are pending (tests/estimate_world.py),
then the app reading what it wrote.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from backend.ml.data import loading, synthetic
from backend.ml.monitoring.check import Monitor
from tests.app.conftest import build_app, ok
from tests.estimate_world import (
    ANOMALY,
    CLASSIFIER,
    REGRESSOR,
    PendingWorld,
    build,
    restore_labels,
    withhold_labels,
)

HIGH = {CLASSIFIER: 0.95}
ESTIMATED = ("estimated_value", "estimated_low", "estimated_high", "estimate_method",
             "estimated_rows")


@pytest.fixture(scope="module")
def estimated(tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[PendingWorld, list, TestClient]]:
    world = build(tmp_path_factory.mktemp("pending_api"))
    saved = withhold_labels(world)
    Monitor(world.runner(MODEL_THRESHOLDS=HIGH), backoff_seconds=0).run_check()
    with TestClient(build_app(world.settings(MODEL_THRESHOLDS=HIGH))) as client:
        yield world, saved, client


def test_the_model_list_shows_the_estimate_under_estimated_names_never_as_score(
        estimated: tuple[PendingWorld, list, TestClient]) -> None:
    world, _, client = estimated
    rows = {m["name"]: m for m in ok(client.get("/ml/models"))["models"]}
    row = rows[CLASSIFIER]
    assert row["state"] == "estimated_below_threshold", row
    assert all(row[k] is not None for k in ESTIMATED), row
    assert row["estimated_low"] <= row["estimated_value"] <= row["estimated_high"]
    assert row["estimated_high"] < row["threshold"]
    meta = world.runner().services.store.production_meta(CLASSIFIER)
    assert row["score"] == meta["score"] != row["estimated_value"]  # the holdout's score
    check = row["last_check"]
    assert check["verdict"] == "estimated_below_threshold" and check["live_score"] is None
    assert check["estimated_value"] == row["estimated_value"]
    assert rows[REGRESSOR]["state"] == "healthy" and rows[REGRESSOR]["estimate_method"] == (
        "direct_loss_estimation")
    assert rows[ANOMALY]["estimated_value"] is None
    assert "not estimated" in rows[ANOMALY]["last_check"]["estimate_note"]
    detail = ok(client.get(f"/ml/models/{CLASSIFIER}"))
    assert detail["last_check"]["estimate_method"] == "cbpe"
    assert "performance_estimator" not in detail["production"]  # bulky: left out


def test_metrics_carry_the_estimate_under_their_own_names(
        estimated: tuple[PendingWorld, list, TestClient]) -> None:
    _, _, client = estimated
    text = client.get("/metrics").text
    for suffix in ("", "_low", "_high"):
        assert re.search(rf'^ml_model_estimated_score{suffix}\{{[^}}]*model="{CLASSIFIER}"'
                         rf'[^}}]*\}} 0\.\d+$', text, re.M), suffix
    assert not re.search(rf'^ml_model_live_score\{{[^}}]*model="{CLASSIFIER}"', text, re.M)
    assert not re.search(rf'^ml_model_estimated_score\{{[^}}]*model="{ANOMALY}"', text, re.M)
    assert re.search(rf'^ml_model_state\{{[^}}]*model="{CLASSIFIER}"[^}}]*'
                     r'state="estimated_below_threshold"\} 1\.0$', text, re.M)
    assert re.search(rf'^ml_model_degraded\{{[^}}]*model="{CLASSIFIER}"[^}}]*\}} 0\.0$',
                     text, re.M)


def test_the_timeline_charts_the_estimate_apart_and_realized_beside_it(
        estimated: tuple[PendingWorld, list, TestClient]) -> None:
    world, saved, client = estimated
    timeline = ok(client.get(f"/ml/models/{CLASSIFIER}/timeline"))
    assert {p["kind"] for p in timeline["points"]} == {"training"}  # no estimate among scores
    [first] = timeline["estimates"]
    assert first["realized_value"] is None and first["estimate_method"] == "cbpe"
    restore_labels(world, saved)
    synthetic.simulate(loading.writable_engine(world.url), days=10)
    Monitor(world.runner(MODEL_THRESHOLDS=HIGH), backoff_seconds=0).run_check()
    [after] = ok(client.get(f"/ml/models/{CLASSIFIER}/timeline"))["estimates"]
    assert after["time"] == first["time"] and after["estimated_value"] == first[
        "estimated_value"]
    assert after["estimation_error"] == pytest.approx(
        after["estimated_value"] - after["realized_value"], abs=1e-6)
    row = next(m for m in ok(client.get("/ml/models"))["models"] if m["name"] == CLASSIFIER)
    assert row["estimated_value"] is None and row["state"] != "estimated_below_threshold"
