"""The policy backtest on a small world, replayed once per module through the real check,
runner and store (only the clock is simulated): 16 days of one model, cost_prediction, on
240 days of history, with the diesel price shock from day 2.

The shock comes soon after day 0's training to keep the module short. A shock late in a
long fresh window is the case the retrain's capped holdout is for (check.py,
RETRAIN_HOLDOUT_MINIMUMS; tests/ml/test_monitor.py): at day 20 of 40 (50 shipments a day)
on_degrade used to retrain 39 times without recovering, and now recovers (the README).
"""
from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.ml.backtest import report
from backend.ml.backtest.command import add_parser, options_from
from backend.ml.backtest.policies import ESTIMATE_MISSING, Policy
from backend.ml.backtest.replay import Options, run_backtest
from backend.ml.backtest.world import DAY0, WorldSpec
from backend.ml.config import Settings
from backend.ml.fleet.specs import UnknownModelError
from tests.app.conftest import build_app, settings_for

MODEL = "cost_prediction"
DAYS, SHIFT = 16, 2
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    options = Options(days=DAYS, policies=tuple(Policy), scenario="fuel_price_shock", at=SHIFT,
                      models=(MODEL,), world=WorldSpec(history_days=240))
    # As the service on two cores: a one-model run fits in this process with one thread
    # (TRAINING_N_JOBS=1 would give it two, and a busy machine made a 3 s fit take 56 s).
    return run_backtest(options, Settings(TRAINING_N_JOBS=2),
                        workdir=tmp_path_factory.mktemp("backtest") / "state")


def days_of(document: dict[str, Any], policy: str) -> list[dict[str, Any]]:
    days: list[dict[str, Any]] = document["policies"][policy]["days"]
    return days


def test_on_degrade_recovers_within_two_checks_of_the_confirmed_degradation(
        document: dict[str, Any]) -> None:
    days = days_of(document, "on_degrade")
    threshold = document["thresholds"][MODEL]
    confirmed = next(d["day"] for d in days if d["verdicts"][MODEL] == "degraded")
    assert confirmed >= SHIFT  # nothing was wrong before the shock
    assert days[confirmed]["fits"] >= 1  # the check retrained it at once
    after = [d for d in days[confirmed + 1:confirmed + 3] if d["scores"][MODEL] is not None]
    assert after and after[-1]["scores"][MODEL] >= threshold, after
    never = days_of(document, "never")
    assert [d["verdicts"][MODEL] for d in never[confirmed:confirmed + 3]].count(
        "degraded") >= 2  # without retrains it stays down


def test_on_degrade_beats_never_with_fewer_retrains_than_nightly(
        document: dict[str, Any]) -> None:
    summary = {p: document["policies"][p]["summary"] for p in ("nightly", "on_degrade", "never")}
    assert summary["on_degrade"]["mean_live_score"] > summary["never"]["mean_live_score"]
    assert summary["on_degrade"]["days_below_threshold"] < summary["never"][
        "days_below_threshold"]
    assert 1 <= summary["on_degrade"]["retrains"] < summary["nightly"]["retrains"]
    assert summary["never"]["retrains"] == 0
    assert summary["never"]["alerts"].get("drift_detected", 0) >= 1  # from the history
    assert all(s["cpu_seconds"] > 0 for s in summary.values())


def test_every_day_is_checked_at_its_simulated_morning(document: dict[str, Any]) -> None:
    for policy in ("nightly", "on_degrade", "never"):
        days = days_of(document, policy)
        assert [d["date"] for d in days] == [(DAY0 + timedelta(days=i)).isoformat()
                                             for i in range(DAYS)]
        assert all(date.fromisoformat(d["checked_at"][:10]) == DAY0 + timedelta(days=i + 1)
                   for i, d in enumerate(days))


def test_on_estimate_is_listed_as_not_available(document: dict[str, Any]) -> None:
    assert document["policies"]["on_estimate"] == {"available": False,
                                                    "reason": ESTIMATE_MISSING}


def test_json_and_svg_are_written_valid_and_served(document: dict[str, Any], small_db: str,
                                                    tmp_path: Path) -> None:
    settings = settings_for(tmp_path, small_db)
    with TestClient(build_app(settings)) as client:
        assert client.get("/ml/backtest").json()["data"] == {"latest": None}
        missing = client.get("/ml/backtest/latest")
        assert missing.status_code == 404 and "backend.ml backtest" in missing.text
        assert client.get("/ml/backtest/latest.svg").status_code == 404

        json_path, svg_path = report.write(document, report.default_out(settings.LOGS_DIR))
        assert json.loads(json_path.read_text())["days"] == DAYS
        root = ET.fromstring(svg_path.read_text())
        drawn = {p.get("data-policy") for p in root.iter(f"{SVG}polyline")}
        assert drawn == {"nightly", "on_degrade", "never"}
        assert len([n for n in root.iter(f"{SVG}line") if n.get("class") == "scenario"]) == 1

        latest = client.get("/ml/backtest/latest")
        assert latest.status_code == 200, latest.text
        assert latest.json()["data"]["policies"]["on_degrade"]["summary"] == \
            document["policies"]["on_degrade"]["summary"]
        index = client.get("/ml/backtest").json()["data"]["latest"]
        assert [r["policy"] for r in index["rows"]] == [p.value for p in Policy]
        assert "policies" not in index  # the days stay in the document
        chart = client.get("/ml/backtest/latest.svg")
        assert chart.status_code == 200
        assert chart.headers["content-type"].startswith("image/svg+xml")
        ET.fromstring(chart.text)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["backtest", *argv])


@pytest.mark.parametrize(("argv", "says"), [
    (["--scenario", "volcano"], "unknown drift scenario 'volcano'"),
    (["--policies", "nightly,weekly"], "unknown policy 'weekly'"),
    (["--days", "30", "--scenario", "fuel_price_shock", "--at", "30"], "--at 30 is beyond"),
    (["--at", "3"], "--at needs --scenario"),
    (["--days", "0"], "--days must be at least 1"),
    (["--models", "cost_prediction,teleport"], "teleport"),
], ids=["scenario", "policy", "at-beyond-days", "at-alone", "days", "model"])
def test_bad_arguments_are_one_line_errors(argv: list[str], says: str) -> None:
    with pytest.raises((ValueError, UnknownModelError)) as caught:
        options_from(parse(*argv))
    message = str(caught.value)
    assert says in message and "\n" not in message
