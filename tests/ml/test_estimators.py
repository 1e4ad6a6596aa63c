"""A spec chooses its estimator; retries adapt to it; scores are raw; the gate serves the best.

The trending series is generated here: weekly orders over six years with a linear trend,
yearly seasonality and noise, and lags of the target as features. Every holdout value lies
above the training range, where trees can only repeat the largest values they saw and a
linear model carries the trend on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from backend.ml.config import Settings
from backend.ml.fleet import estimators, specs
from backend.ml.monitoring.check import RETRY_STRATEGIES
from backend.ml.registry import formats
from backend.ml.registry.promotion import promotion_decision
from backend.ml.runs.promote import save_and_promote
from backend.ml.runs.services import Services
from backend.ml.training import trainer
from backend.ml.training.results import model_detail

# ---- the trending series -------------------------------------------------------------------

LAGS = (1, 2, 52)
TIME, TARGET = "demand_date", "tonnes_ordered"  # the daily_demand table's columns


def trending_series(*, weeks: int = 6 * 52, seed: int = 7) -> pd.DataFrame:
    """Weekly tonnes ordered: a linear trend, a yearly cycle and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(weeks)
    tonnes = 500 + 3.0 * t + 60 * np.sin(2 * np.pi * t / 52) + rng.normal(0, 5, weeks)
    return pd.DataFrame({TIME: pd.date_range("2020-01-06", periods=weeks, freq="7D"),
                         TARGET: tonnes})


def weekly_lags(frame: pd.DataFrame) -> pd.DataFrame:
    """Last week's, the week before's and last year's orders: earlier rows only."""
    out = frame.sort_values(TIME, kind="stable").copy()
    for lag in LAGS:
        out[f"lag_{lag}"] = out[TARGET].shift(lag)
    return out.dropna(subset=[f"lag_{max(LAGS)}"]).reset_index(drop=True)


# Declared here, not in SPECS: the trainer takes the spec itself. Its table is daily_demand
# (the trainer reads a table's time column and column types from the schema); the series
# fills only the two columns the spec reads.
TREES = specs.ModelSpec(
    "weekly_orders", "prediction", "daily_demand", tuple(f"lag_{lag}" for lag in LAGS),
    TARGET, "regression", "r2", "Tonnes ordered next week, from the weeks before.",
    threshold=0.75, min_samples=200, prepare=weekly_lags,
    derived={f"lag_{lag}": (f"{TARGET}@lag",) for lag in LAGS})
LINEAR = dataclasses.replace(TREES, estimator=estimators.linear_pipeline)


def scaled_neighbours(spec: specs.ModelSpec, params: dict) -> Pipeline:
    """A model whose fit takes no sample weights."""
    return Pipeline([("scale", StandardScaler()),
                     ("model", KNeighborsRegressor(**params))])


NEIGHBOURS = dataclasses.replace(TREES, estimator=scaled_neighbours,
                                 search_grid=({"n_neighbors": 3}, {"n_neighbors": 10}))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small fits, on a shared machine: OpenMP threads would only contend."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def series() -> pd.DataFrame:
    return trending_series()


def test_a_linear_spec_follows_the_trend_where_trees_cannot(series: pd.DataFrame) -> None:
    linear = trainer.train_one(LINEAR, series, threshold=0.75)
    trees = trainer.train_one(TREES, series, threshold=0.75)
    assert linear.ok and trees.ok, (linear.error, trees.error)
    assert type(linear.estimator[-1]).__name__ == "Ridge"
    assert type(trees.estimator[-1]).__name__ == "HistGradientBoostingRegressor"
    assert linear.score > 0.9 and linear.passed, linear.score
    assert trees.score < 0 and not trees.passed, trees.score  # raw, not clipped at 0
    for result in (linear, trees):
        assert result.lift == pytest.approx(result.score - result.baseline, abs=1e-6)
        summary = result.summary()
        assert summary["score"] == result.score and summary["lift"] == result.lift
        assert "estimator" not in summary
        assert model_detail(result)["lift"] == result.lift
    # The linear family stores with skops, its allow-list read off the spec's own Pipeline.
    fmt, payload = formats.dump(LINEAR, linear.estimator)
    assert fmt == "skops"
    X = weekly_lags(series)[list(LINEAR.features)].tail(5)
    assert (formats.load(LINEAR, fmt, payload).predict(X) == linear.estimator.predict(X)).all()


def test_the_retry_strategies_work_with_a_linear_model(series: pd.DataFrame) -> None:
    since = series[TIME].iloc[int(len(series) * 0.9)].isoformat()
    results = {options.strategy: trainer.train_one(
        LINEAR, series, threshold=0.75,
        options=dataclasses.replace(options, holdout_since=since))
        for options in RETRY_STRATEGIES}
    assert set(results) == {"full", "recency_weighted", "search"}
    for strategy, result in results.items():
        assert result.ok, (strategy, result.error)
        assert result.strategy == strategy  # Ridge takes sample weights: they are passed
    assert results["recency_weighted"].score != results["full"].score
    assert results["search"].params["alpha"] in {p["alpha"] for p in estimators.SEARCH_GRIDS[
        type(results["search"].estimator[-1])]}


def test_a_model_without_sample_weights_leans_on_recent_rows_instead(
        series: pd.DataFrame) -> None:
    pipeline = NEIGHBOURS.make_estimator()
    assert estimators.sample_weight_key(pipeline) is None
    assert estimators.sample_weight_key(LINEAR.make_estimator()) == "model__sample_weight"
    full = trainer.train_one(NEIGHBOURS, series, threshold=0.75)
    weighted = trainer.train_one(NEIGHBOURS, series, threshold=0.75, options=trainer.TrainOptions(
        "recency_weighted", half_life_days=30.0))
    searched = trainer.train_one(NEIGHBOURS, series, threshold=0.75,
                                 options=trainer.TrainOptions("search"))
    assert full.ok and weighted.ok and searched.ok, (weighted.error, searched.error)
    assert weighted.strategy == "recent_window" and weighted.rows_train < full.rows_train
    assert searched.params["n_neighbors"] in (3, 10)


def test_a_search_needs_a_grid_for_its_model() -> None:
    bare = dataclasses.replace(NEIGHBOURS, search_grid=None)
    result = trainer.train_one(bare, trending_series(), threshold=0.75,
                               options=trainer.TrainOptions("search"))
    assert not result.ok and "declare `search_grid` on the spec" in result.error
    assert estimators.search_grid(TREES, TREES.make_estimator()) == estimators.SEARCH_GRIDS[
        type(TREES.make_estimator()[-1])]


def test_a_factory_must_build_a_pipeline() -> None:
    odd = dataclasses.replace(TREES, estimator=lambda spec, params: KNeighborsRegressor())
    with pytest.raises(estimators.EstimatorError, match="not a scikit-learn Pipeline"):
        odd.make_estimator()


# ---- the promotion gate: serve the best ----------------------------------------------------

@pytest.mark.parametrize(("score", "production", "promote", "below", "words"), [
    (0.50, 0.40, True, True, "production is below it too and the candidate beats it"),
    (0.403, 0.40, False, False, "not better than it by more than the tolerance"),
    (0.30, 0.40, False, False, "worse than production"),
    (-0.24, -54.5, True, True, "vs production -54.5000"),
    (0.50, 0.70, False, False, "0.5000 is below its threshold 0.5800"),
    (0.62, 0.40, True, False, "promoted: score 0.6200"),
    (0.50, None, True, True, "first version, promoted although"),
], ids=["better_both_below", "within_tolerance", "worse_both_below", "negative_r2",
        "production_above", "candidate_passes", "first_below"])
def test_production_below_threshold_yields_to_a_better_candidate(
        score: float, production: float | None, promote: bool, below: bool,
        words: str) -> None:
    decided = promotion_decision(candidate_score=score, candidate_passed=score >= 0.58,
                                 production_score_on_same_holdout=production, tolerance=0.005,
                                 threshold=0.58)
    assert (decided.promote, decided.below_threshold) == (promote, below)
    assert words in decided.reason


def test_save_and_promote_serves_the_better_of_two_below_threshold(tmp_path: Path) -> None:
    """End to end through the store: a weak first version, a better one also under the
    threshold (promoted, flagged, alerted), then a worse one (held)."""
    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'absent.db'}",
                        MODELS_DIR=tmp_path / "models", LOGS_DIR=tmp_path / "logs",
                        ALERT_COOLDOWN_SECONDS=0, BACKUP_MODELS=False)
    services = Services.from_settings(settings)
    spec = specs.get_spec("scenario_analysis")
    tables = {spec.table: dispatch_table()}
    weak, good = (dataclasses.replace(spec, params={"max_iter": n}) for n in (1, 25))

    def run(fit_spec: specs.ModelSpec, run_id: str) -> dict:
        result = trainer.train_one(fit_spec, tables[spec.table], threshold=0.58)
        assert result.ok and not result.passed, (result.error, result.score)
        decision = save_and_promote(services, run_id, [result], tables, "scheduler")[spec.name]
        return {"score": result.score, **decision.as_detail()}

    first, better, worse = run(weak, "run-1"), run(good, "run-2"), run(weak, "run-3")
    assert first["promoted"] and first["below_threshold"]
    assert better["promoted"] and better["below_threshold"], better
    assert better["score"] > better["production_score_on_holdout"] + 0.005
    assert not worse["promoted"] and "worse than production" in worse["decision"]
    assert services.store.aliases(spec.name)["production"] == better["version"]
    alerts = [a for a in services.history.alerts(limit=10)
              if a["kind"] == "accuracy_below_threshold"]
    assert {a["level"] for a in alerts} == {"warning"} and len(alerts) == 2
    assert any(f"{better['version']} scored" in a["message"] and "beats production"
               in a["message"] for a in alerts)


def dispatch_table(rows: int = 900, seed: int = 3) -> pd.DataFrame:
    """Shifts of dispatch decisions whose throughput a model can learn only in part: every
    fit stays under scenario_analysis's threshold."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "decided_at": pd.date_range("2025-01-01", periods=rows, freq="8h"),
        "yard": rng.choice(["Bokaro", "CMO Kolkata"], rows),
        "shift": rng.choice(["A", "B", "C"], rows),
        "rakes_available": rng.integers(0, 10, rows),
        "trucks_available": rng.integers(0, 40, rows),
        "demand_surge": rng.normal(0, 1, rows),
        "yard_closure": rng.integers(0, 2, rows),
        "weather_alert": rng.integers(0, 2, rows),
        "stock_level_pct": rng.uniform(0, 100, rows),
        "pending_orders": rng.integers(0, 50, rows),
        "action_taken": rng.choice(["dispatch_rail", "dispatch_road", "hold"], rows),
    })
    frame["throughput_tonnes"] = (2000 + 150 * frame["rakes_available"]
                                  + rng.normal(0, 500, rows))
    return frame
