"""Which models each drift scenario hurts, measured, against the README's scenario table
and the check's drift warning; and calm days that raise no drift alert.

The fleet is trained once (the session's fit of all 17 on the small database, 300 days to
31 October). Each scenario is simulated for DAYS days into a copy of that database, and
every model is scored on the fresh rows as the check scores them. A scenario's own draws
come from their own stream, so the calm copy holds the same shipments without the
change: "before" and "after" are the same rows, and `hurts` (backend.ml.training.drift,
the one definition) compares them beyond the noise of those rows. The check, which has no
"before", must warn of drift for exactly those models.
"""

from __future__ import annotations

import functools
import re
import shutil
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from backend.ml.config import REPO_ROOT, Settings
from backend.ml.data import loading, schema, synthetic
from backend.ml.data.synthetic import pending
from backend.ml.fleet import specs
from backend.ml.monitoring.check import Monitor
from backend.ml.monitoring.fresh import fresh_minimum, fresh_rows, fresh_tables, seen_ranges
from backend.ml.runs.promote import save_and_promote
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from backend.ml.training import trainer
from backend.ml.training.drift import (
    ScoreChange,
    drift_alert_due,
    drift_report,
    hurts,
    score_change,
    score_interval,
)
from tests.conftest import SMALL_END, thresholds_for

DAYS = 30
CALM = "calm"
Outputs = tuple[np.ndarray, np.ndarray]  # (truth, model output) on the fresh rows


def simulated_copy(small_db: str, folder: Path, scenario: str | None, days: int) -> str:
    path = folder / f"{scenario or CALM}.db"
    shutil.copy(small_db.removeprefix("sqlite:///"), path)
    url = f"sqlite:///{path}"
    engine = loading.writable_engine(url)
    synthetic.simulate(engine, days=days, scenario=scenario)
    # Every outcome of those days known: a scenario that delays deliveries would otherwise
    # leave other rows labelled than the calm days do, and the matrix compares the same rows.
    with engine.begin() as conn:
        pending.release(conn, pd.Timestamp("2200-01-01"))
    return url


def fresh_outputs(url: str, trained: Mapping[str, trainer.TrainResult],
                  calm: Mapping[str, tuple[pd.DataFrame, Outputs]] | None = None,
                  ) -> dict[str, tuple[pd.DataFrame, Outputs]]:
    """Per model with enough fresh rows: those rows and what the model makes of them. A
    model whose inputs and truth are exactly the calm ones is not scored again."""
    tables = fresh_tables(url, {n: str(r.data_end) for n, r in trained.items()})
    found = {}
    for name, result in trained.items():
        spec = specs.get_spec(name)
        fresh = fresh_rows(spec, tables[spec.table], str(result.data_end))
        # The simulated days only: the session's last days, whose labels came in meanwhile,
        # are calm in every world and would dilute what a scenario does.
        fresh = fresh[fresh[schema.time_column(spec.table)] >= pd.Timestamp(SMALL_END)
                      + pd.Timedelta(days=1)]
        if len(fresh) < fresh_minimum(spec):
            continue
        columns = [*spec.features, spec.target]
        if calm is not None and same_rows(fresh[columns], calm[name][0][columns]):
            found[name] = calm[name]
            continue
        found[name] = (fresh, (trainer.target_values(spec, fresh[spec.target]),
                               trainer.decision_values(spec, result.estimator,
                                                       fresh[list(spec.features)])))
    return found


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    # Categories differ between databases: compare values, not dtypes.
    return a.shape == b.shape and a.reset_index(drop=True).astype(object).equals(
        b.reset_index(drop=True).astype(object))


@functools.cache
def ranges(url: str, table: str, before: str) -> dict[str, tuple[float, float]]:
    return seen_ranges(url, table, before)


def drift_warned(small_db: str, trained: Mapping[str, trainer.TrainResult],
                 found: Mapping[str, tuple[pd.DataFrame, Outputs]]) -> set[str]:
    """The models the check would warn of drift, from their fresh rows alone."""
    warned = set()
    for name, (fresh, outputs) in found.items():
        spec, result = specs.get_spec(name), trained[name]
        seen = ranges(small_db, spec.table, str(result.holdout_start))
        report = drift_report(spec, result.feature_stats, fresh,
                              seen={f: seen[f] for f in spec.numeric if f in seen})
        if report["novel_features"] and drift_alert_due(
                report, score_interval(spec.metric, *outputs), result.score):
            warned.add(name)
    return warned


@pytest.fixture(scope="module")
def measured(small_db: str, trained: dict[str, trainer.TrainResult],
             tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[dict[str, dict[str, ScoreChange]], dict[str, set[str]]]:
    """scenario -> model -> its live score on the same rows without and with it; and
    scenario (or calm) -> the models the check would warn of drift."""
    folder = tmp_path_factory.mktemp("scenarios")
    calm = fresh_outputs(simulated_copy(small_db, folder, None, DAYS), trained)
    changes: dict[str, dict[str, ScoreChange]] = {}
    warned = {CALM: drift_warned(small_db, trained, calm)}
    for scenario in synthetic.SCENARIOS:
        drifted = fresh_outputs(simulated_copy(small_db, folder, scenario, DAYS), trained,
                                calm)
        changes[scenario] = {name: score_change(specs.get_spec(name).metric, calm[name][1],
                                                drifted[name][1])
                             for name in calm}
        warned[scenario] = drift_warned(small_db, trained, drifted)
    return changes, warned


# The thresholds the session's fleet was trained against.
THRESHOLDS = thresholds_for(list(specs.SPECS.values()))


def hurt_by(matrix: Mapping[str, Mapping[str, ScoreChange]]) -> dict[str, set[str]]:
    return {scenario: {name for name, change in row.items() if hurts(change, THRESHOLDS[name])}
            for scenario, row in matrix.items()}


def readme_scenarios() -> dict[str, set[str]]:
    """The README's scenario table: scenario -> the models its `hurts` column names
    ("none" for a scenario built to hurt nothing)."""
    text = (REPO_ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([\w, ]+) \|$", text, flags=re.MULTILINE)
    return {name: {m.strip() for m in models.split(",")} - {"none"} for name, models in rows
            if name in synthetic.SCENARIOS}


def print_matrix(matrix: Mapping[str, Mapping[str, ScoreChange]]) -> None:
    scenarios = list(matrix)
    print(f"\nlive score on the same {DAYS} days of fresh rows, without -> with each "
          "scenario (* hurts: under the threshold, or more than the drift tolerance lower, "
          "beyond the rows' noise)")
    print(f"{'model':<24}" + "".join(f"{s:>24}" for s in scenarios))
    for name in specs.MODEL_NAMES:
        cells = []
        for scenario in scenarios:
            change = matrix[scenario].get(name)
            if change is None:
                cells.append(f"{'no fresh labels':>24}")
                continue
            mark = "*" if hurts(change, THRESHOLDS[name]) else " "
            cells.append(f"{change.before:>9.3f} -> {change.after:>7.3f} {mark}")
        print(f"{name:<24}" + "".join(f"{c:>24}" for c in cells))


def test_the_readme_scenario_table_is_the_measured_matrix(
        measured: tuple[dict[str, dict[str, ScoreChange]], dict[str, set[str]]]) -> None:
    matrix, warned = measured
    print_matrix(matrix)
    print("drift warnings the check raises:", {k: sorted(v) for k, v in warned.items()})
    hurt = hurt_by(matrix)
    readme = readme_scenarios()
    # A scenario that hurts nothing (input shift only) may be left out of the table.
    assert readme == {s: models for s, models in hurt.items() if models or s in readme}
    assert {s.name: set(s.hurts) for s in synthetic.SCENARIOS.values()} == hurt
    for scenario in synthetic.SCENARIOS.values():  # it hurts at least what it is built for
        assert set(scenario.targets) <= hurt[scenario.name], scenario.name
    # Without a "before", the check warns of drift for exactly the models hurt, and of
    # nothing on the same days without a scenario.
    assert warned == {CALM: set(), **hurt}


def test_a_scenario_changes_only_what_it_changes() -> None:
    """The same days with and without a scenario hold the same shipments, telemetry and
    decisions: only the columns the scenario moves, and the outcomes they cause, differ."""
    calm = synthetic.generate(date(2026, 11, 1), 10, seed=42)
    for name, expected in {
            "fuel_price_shock": {"shipments": {"fuel_price", "total_cost", "cheapest_option"}},
            "sensor_recalibration": {"equipment_telemetry": {"vibration_mm_s"}}}.items():
        drifted = synthetic.generate(date(2026, 11, 1), 10, seed=42, scenario=name)
        changed = {table: {c for c in frame.columns if not frame[c].equals(drifted[table][c])}
                   for table, frame in calm.items()}
        assert {t: c for t, c in changed.items() if c} == expected, name


class RecordingRunner(Runner):
    """Records the retrains a degraded verdict asks for instead of training them: what is
    tested here is the drift alert, and a retrain only adds minutes."""

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.retrains: list[str] = []

    def run(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        [name] = kwargs["models"]
        self.retrains.append(name)
        return {"run_id": f"run-recorded-{len(self.retrains)}",
                "model_details": {"recorded": {name: {"promoted": False}}}}


CALM_STEPS = (1, 6, 23)  # days appended before each check: after 1, 7 and 30


def test_thirty_calm_days_raise_no_drift_alert(small_db: str, small_tables: dict[str, Any],
                                               trained: dict[str, trainer.TrainResult],
                                               tmp_path: Path) -> None:
    """The fleet serves 30 calm days (November: Diwali and Chhath, other weather), checked
    as rows arrive, without a cooldown, so every check that would alert does. The checks
    come after 1, 7 and 30 days: fresh windows from one noisy day to a month. An hourly
    check between two of them scores the same rows with the same versions, and decides
    the same about drift (a check a day over the 30 days raises none either; the rule
    before raised 112)."""
    database = tmp_path / "calm.db"
    shutil.copy(small_db.removeprefix("sqlite:///"), database)
    settings = Settings(DATABASE_URL=f"sqlite:///{database}", MODELS_DIR=tmp_path / "models",
                        LOGS_DIR=tmp_path / "logs", ALERT_COOLDOWN_SECONDS=0)
    services = Services.from_settings(settings)
    save_and_promote(services, "run-calm", list(trained.values()), small_tables, actor="cli")
    monitor = Monitor(RecordingRunner(services), backoff_seconds=0)
    engine = loading.writable_engine(settings.DATABASE_URL)
    verdicts: dict[str, list[str]] = {}
    for days in CALM_STEPS:
        synthetic.simulate(engine, days=days)
        for name, checked in monitor.run_check()["models"].items():
            verdicts.setdefault(name, []).append(
                f"{checked['verdict']}" + (f" {checked['live_score']:.3f}"
                                           if "live_score" in checked else ""))
    alerts = services.history.alerts(500)
    print("\nverdicts after 1, 7 and 30 calm days:")
    for name, seen in sorted(verdicts.items()):
        print(f"  {name:<24} {' | '.join(seen)}")
    print("alerts:", sorted((a["kind"], a["model"]) for a in alerts))
    assert [a for a in alerts if a["kind"] == "drift_detected"] == []
