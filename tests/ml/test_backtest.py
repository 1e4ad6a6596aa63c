"""The policy backtest on a small world, replayed once per module through the real check,
runner and store (only the clock is simulated): 200 days of one model, cost_prediction, on
240 days of history, with the diesel price shock from day 180, the policies two at a time
in their own processes (as the CLI runs them on two cores): about 400 CPU-seconds, 3.5
minutes on two free cores.

A shock late in a long fresh window is what the check must see at once (its live window,
LIVE_WINDOW_MINIMUMS) and what a retrain must learn from although labels have confirmed
only a few days of it (the holdout after a step in the live errors, RETRAIN_HOLDOUT_*
and `rows_since_shift` in monitoring/fresh.py; tests/ml/test_monitor.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import shutil
import xml.etree.ElementTree as ET
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from backend.ml.backtest import report
from backend.ml.backtest.command import (
    DEFAULT_POLICIES,
    DayPrinter,
    add_parser,
    options_from,
)
from backend.ml.backtest.policies import (
    DAILY_RUNS,
    ESTIMATED_VERDICTS,
    RETRAINING,
    Policy,
    policy_settings,
)
from backend.ml.backtest.replay import Options, replay_in_copy, run_backtest
from backend.ml.backtest.world import DAY0, WorldSpec, settings_in
from backend.ml.config import Settings
from backend.ml.fleet.specs import UnknownModelError
from backend.ml.monitoring.state import read_state
from backend.ml.runs.services import Services
from tests.app.conftest import build_app, settings_for

MODEL = "cost_prediction"
DAYS, SHIFT = 200, 180
PREFIX = 12  # calm days replayed again in turn
SVG = "{http://www.w3.org/2000/svg}"


# The four the command runs by default (nightly_on_degrade is asked for by name)
RUN = (Policy.NIGHTLY, Policy.ON_DEGRADE, Policy.ON_ESTIMATE, Policy.NEVER)
OPTIONS = Options(days=DAYS, policies=RUN, scenario="fuel_price_shock", at=SHIFT,
                  models=(MODEL,), world=WorldSpec(history_days=240))
# As the service on two cores: a one-model run fits in this process with one thread
# (TRAINING_N_JOBS=1 would give it two, and a busy machine made a 3 s fit take 56 s).
SETTINGS = Settings(TRAINING_N_JOBS=2)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backtest") / "state"


@pytest.fixture(scope="module")
def document(state: Path) -> dict[str, Any]:
    return run_backtest(OPTIONS, SETTINGS, workdir=state, keep_state=True, jobs=2)


def days_of(document: dict[str, Any], policy: str) -> list[dict[str, Any]]:
    days: list[dict[str, Any]] = document["policies"][policy]["days"]
    return days


def test_on_degrade_recovers_within_two_checks_of_the_confirmed_degradation(
        document: dict[str, Any]) -> None:
    print("\n" + report.table(document))  # the rehearsal's table, in the test output
    days = days_of(document, "on_degrade")
    threshold = document["thresholds"][MODEL]
    for policy in ("on_degrade", "never"):
        print(policy, [(d["day"], d["verdicts"][MODEL], d["scores"][MODEL], d["fits"])
                       for d in days_of(document, policy)[SHIFT + 3:SHIFT + 10]])
    confirmed = next(d["day"] for d in days if d["verdicts"][MODEL] == "degraded")
    assert confirmed >= SHIFT  # nothing was wrong before the shock
    assert days[confirmed]["fits"] >= 1  # the check retrained it at once
    after = [d for d in days[confirmed + 1:confirmed + 3] if d["scores"][MODEL] is not None]
    assert after and after[-1]["scores"][MODEL] >= threshold, after
    never = days_of(document, "never")
    assert [d["verdicts"][MODEL] for d in never[confirmed:confirmed + 3]].count(
        "degraded") >= 2  # without retrains it stays down


def test_the_retrain_learnt_from_the_shift_it_found(document: dict[str, Any],
                                                    state: Path) -> None:
    """The check found where the live errors stepped, and held out only the newest half
    of the rows since: the rest of the shocked rows were the fit's to learn from."""
    history = Services.from_settings(settings_in(state / "on_degrade", SETTINGS)).history
    retrained = [c for c in history.checks(limit=10**6, archived=True)
                 if c["models"][MODEL].get("retrain")]
    assert retrained, "no retrain on record"
    first = min(retrained, key=lambda c: str(c["timestamp"]))["models"][MODEL]["retrain"]
    shock = pd.Timestamp(DAY0 + timedelta(days=SHIFT))
    # labels confirmed about 3.5 days of the shock (145 shipments a day) by then
    assert 300 <= first["rows_since_shift"] <= 700, first
    assert pd.Timestamp(first["holdout_since"]) > shock + timedelta(days=1), first
    # and the step is on record, for every later fit of the model (a daily run's too)
    since = read_state(state / "on_degrade" / "logs").of(MODEL).shift_since
    assert since is not None and abs(pd.Timestamp(since).tz_localize(None) - shock) < \
        timedelta(days=1), since


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
    for policy in RUN:
        days = days_of(document, policy)
        assert [d["date"] for d in days] == [(DAY0 + timedelta(days=i)).isoformat()
                                             for i in range(DAYS)]
        assert all(date.fromisoformat(d["checked_at"][:10]) == DAY0 + timedelta(days=i + 1)
                   for i, d in enumerate(days))


def test_on_estimate_is_the_check_retraining_on_estimated_drops_too(
        document: dict[str, Any]) -> None:
    assert policy_settings(Policy.ON_ESTIMATE, SETTINGS).ESTIMATE_ACTION == "retrain"
    assert policy_settings(Policy.ON_DEGRADE, SETTINGS).ESTIMATE_ACTION == "warn"
    summary = document["policies"]["on_estimate"]["summary"]
    # it retrains at least what on_degrade retrains on labels (the shock is under it too)
    assert summary["retrains"] >= 1
    assert summary["mean_live_score"] > document["policies"]["never"]["summary"][
        "mean_live_score"]


def test_days_with_only_an_estimate_are_counted_per_policy(document: dict[str, Any]) -> None:
    for policy in RUN:
        days = days_of(document, policy)
        for day in days:
            assert day["estimated_only"] == [
                n for n, v in day["verdicts"].items() if v in ESTIMATED_VERDICTS]
            assert all(day["scores"][n] is None for n in day["estimated_only"])
        assert document["policies"][policy]["summary"]["estimated_only_days"] == sum(
            len(d["estimated_only"]) for d in days)
    assert "estimated" in report.table(document).splitlines()[0]


def test_policies_side_by_side_replay_the_same_days_as_in_turn(
        document: dict[str, Any], state: Path, tmp_path: Path) -> None:
    """nightly's first days again, in this process: a fit a day, each estimated on the
    next morning, must come out the same as in the policy's own process."""
    assert document["jobs"] == 2
    shutil.copytree(state / "day0", tmp_path / "day0")
    prefix = dataclasses.replace(OPTIONS, days=PREFIX, scenario=None, at=None)
    alone = replay_in_copy(Policy.NIGHTLY, tmp_path, SETTINGS, prefix, None)["days"]
    side = days_of(document, "nightly")[:PREFIX]
    assert all(d["fits"] == 1 for d in side)
    for key in ("scores", "verdicts", "fits", "estimates"):
        assert [d[key] for d in alone] == [d[key] for d in side], key


def test_nightly_on_degrade_trains_every_night_as_the_service_does(
        document: dict[str, Any], state: Path, tmp_path: Path) -> None:
    """The service's own default, both at once: a daily run a night (calm days: the same
    fits, scores and estimates as nightly's) and the check's retrains (on_degrade's)."""
    assert Policy.NIGHTLY_ON_DEGRADE in RETRAINING and Policy.NIGHTLY_ON_DEGRADE in DAILY_RUNS
    assert "nightly_on_degrade" not in DEFAULT_POLICIES  # the four by default
    shutil.copytree(state / "day0", tmp_path / "day0")
    prefix = dataclasses.replace(OPTIONS, days=4, scenario=None, at=None)
    both = replay_in_copy(Policy.NIGHTLY_ON_DEGRADE, tmp_path, SETTINGS, prefix, None)["days"]
    nightly = days_of(document, "nightly")[:4]
    for key in ("scores", "verdicts", "fits", "estimates"):
        assert [d[key] for d in both] == [d[key] for d in nightly], key


def test_progress_shows_each_policy_and_the_time_left() -> None:
    now = [0.0]
    stream = io.StringIO()
    printer = DayPrinter(policies=2, jobs=2, stream=stream, clock=lambda: now[0])
    for policy, pace in ((Policy.NEVER, 2.0), (Policy.NIGHTLY, 10.0)):  # side by side
        for day in range(4):
            now[0] = pace * (day + 1)
            printer(policy, day, 8)
    # nightly's 4 days left at 10 s a day decide it, not the mean pace (4 days of never
    # at 2 s and nightly's 40 s on two processes would be 24 s)
    assert printer.seconds_left(8) == pytest.approx(40.0)
    last = stream.getvalue().splitlines()[-1]
    assert "never 4/8 nightly 4/8" in last and "about 40 s left" in last, last


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
        lines = [*root.iter(f"{SVG}polyline"), *root.iter(f"{SVG}circle")]  # a lone day: a dot
        scored = {p for p in RUN
                  if any(v is not None for d in days_of(document, p) for v in d["scores"].values())}
        assert {"on_degrade", "never"} <= scored
        assert {p.get("data-policy") for p in lines if p.get("class") == "policy"} == scored
        # a policy with days of estimates only is drawn dashed, never as a live score
        estimated = {p for p in RUN if document["policies"][p]["summary"][
            "mean_estimated_score"] is not None}
        assert {p.get("data-policy") for p in lines if p.get("class") == "estimate"} <= estimated
        assert len([n for n in root.iter(f"{SVG}line") if n.get("class") == "scenario"]) == 1

        latest = client.get("/ml/backtest/latest")
        assert latest.status_code == 200, latest.text
        assert latest.json()["data"]["policies"]["on_degrade"]["summary"] == \
            document["policies"]["on_degrade"]["summary"]
        index = client.get("/ml/backtest").json()["data"]["latest"]
        assert [r["policy"] for r in index["rows"]] == [p.value for p in RUN]
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
    (["--jobs", "0"], "--jobs must be at least 1"),
], ids=["scenario", "policy", "at-beyond-days", "at-alone", "days", "model", "jobs"])
def test_bad_arguments_are_one_line_errors(argv: list[str], says: str) -> None:
    with pytest.raises((ValueError, UnknownModelError)) as caught:
        options_from(parse(*argv))
    message = str(caught.value)
    assert says in message and "\n" not in message


def test_the_chart_names_a_policy_drawn_over_and_keeps_a_late_scenario_clear_of_the_legend(
        ) -> None:
    from backend.ml.backtest import chart

    def days(scores: list[float]) -> list[dict[str, Any]]:
        return [{"scores": {MODEL: s}, "estimates": {MODEL: None}} for s in scores]

    same, other = [0.8, 0.7, 0.75, 0.8], [0.8, 0.6, 0.55, 0.5]
    document = {"days": 4, "scenario": "fuel_price_shock", "at": 3, "policies": {
        "on_degrade": {"available": True, "days": days(same)},
        "on_estimate": {"available": True, "days": days(same)},
        "never": {"available": True, "days": days(other)}}}
    root = ET.fromstring(chart.render(document))
    texts = {t.text: t for t in root.iter(f"{SVG}text")}
    assert "on_degrade (= on_estimate)" in texts  # drawn first, hidden under on_estimate
    assert "on_estimate" in texts and "never" in texts
    assert texts["fuel_price_shock"].get("text-anchor") == "end"  # left of its line
