"""Training the fleet: honest holdouts, baselines, failure isolation, fan-out backends."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.ml.data import schema
from backend.ml.fleet import specs
from backend.ml.training import trainer
from backend.ml.training.results import summarize
from tests.conftest import thresholds_for

ALL = sorted(specs.SPECS)


@pytest.mark.parametrize("name", ALL)
def test_each_model_trains_and_beats_its_baseline(name: str, trained: dict) -> None:
    result = trained[name]
    assert result.ok, result.error
    assert 0.0 <= result.score <= 1.0
    assert result.score > result.baseline + 0.05, (result.score, result.baseline)
    assert result.passed, f"{name} {result.score} below {result.threshold} on healthy data"
    assert result.rows_train > 0 and result.rows_holdout > 0
    assert result.feature_stats.keys() == set(specs.get_spec(name).features)


@pytest.mark.parametrize("name", ALL)
def test_holdout_is_strictly_later_than_every_training_row(name: str, trained: dict,
                                                           small_tables: dict) -> None:
    spec = specs.get_spec(name)
    labelled, _ = trainer.labelled_frame(spec, small_tables[spec.table])
    train, holdout = trainer.time_split(labelled, schema.time_column(spec.table))
    tcol = schema.time_column(spec.table)
    assert train[tcol].max() < holdout[tcol].min()
    share = len(holdout) / len(labelled)
    assert 0.1 <= share <= 0.3 and train[tcol].is_monotonic_increasing
    result = trained[name]
    assert pd.Timestamp(result.holdout_start) == holdout[tcol].min()
    assert result.rows_holdout == len(holdout)
    # The gate reuses the fit's holdout values: they are the model's on those very rows
    # (as the gate selects them), and never part of what is stored.
    gate_rows = labelled[labelled[tcol] >= pd.Timestamp(result.holdout_start)]
    expected = trainer.decision_values(spec, result.estimator, gate_rows[list(spec.features)])
    np.testing.assert_array_equal(result.holdout_values, expected)
    assert "holdout_values" not in result.summary() and "estimator" not in result.summary()


def test_summary_shape_and_status() -> None:
    ok = trainer.TrainResult("delay_prediction", "prediction", "r2", 0.75, "ok", score=0.8,
                             baseline=0.0, passed=True)
    bad = trainer.TrainResult("cost_prediction", "prediction", "r2", 0.75, "failed",
                              error="boom")
    summary = summarize([ok, bad], timestamp="t", duration_seconds=1.0)
    assert summary["status"] == "partial"
    assert summary["failed_models"] == 1 and summary["successful_models"] == 1
    assert set(summary["model_details"]) == {"prediction_models", "optimization_models",
                                             "risk_decision_models", "advanced_models"}
    assert summary["model_details"]["prediction_models"]["cost_prediction"]["error"] == "boom"
    assert summarize([bad], timestamp="t", duration_seconds=1)["status"] == "failed"
    assert summarize([ok], timestamp="t", duration_seconds=1)["status"] == "success"


def test_one_bad_model_does_not_stop_the_others(small_tables: dict) -> None:
    chosen = [specs.get_spec("scenario_analysis"), specs.get_spec("supplier_performance")]
    tables = dict(small_tables)
    tables["supplier_scorecards"] = tables["supplier_scorecards"].head(0)  # empty table
    results = trainer.train_many(chosen, tables, thresholds=thresholds_for(chosen), n_jobs=2)
    by_name = {r.name: r for r in results}
    assert by_name["scenario_analysis"].ok
    failed = by_name["supplier_performance"]
    assert not failed.ok and "0 labelled rows" in failed.error
    assert failed.estimator is None


def test_missing_column_is_named(small_tables: dict) -> None:
    spec = specs.get_spec("predictive_maintenance")
    table = small_tables[spec.table].drop(columns=["oil_quality"])
    result = trainer.train_one(spec, table, threshold=0.5)
    assert not result.ok and "oil_quality" in result.error


def test_nans_and_unseen_categories_are_handled(small_tables: dict) -> None:
    spec = specs.get_spec("decision_support")
    table = small_tables[spec.table].copy()
    rng = np.random.default_rng(1)
    holes = rng.random(len(table)) < 0.05
    table.loc[holes, "stock_level_pct"] = np.nan
    table["yard"] = table["yard"].astype(object)
    table.loc[holes, "yard"] = None
    newest = table.index[-50:]
    table.loc[newest, "yard"] = "A yard never seen before"
    pending = int(table["best_action"].isna().sum())  # the newest: labels not in yet
    table.loc[table.index[:30], "best_action"] = None  # unlabelled rows are skipped
    result = trainer.train_one(spec, table, threshold=0.5)
    assert result.ok, result.error
    assert result.rows_unlabelled == 30 + pending
    assert result.score > result.baseline
    unseen = table.loc[newest, list(spec.features)]
    assert len(result.estimator.predict(unseen)) == 50


def test_too_few_rows_is_a_clear_failure(small_tables: dict) -> None:
    spec = specs.get_spec("cost_prediction")
    result = trainer.train_one(spec, small_tables["shipments"].head(100), threshold=0.7)
    assert not result.ok and "needs at least 500" in result.error


def test_retrain_strategies_differ(small_tables: dict) -> None:
    spec = specs.get_spec("scenario_analysis")
    table = small_tables[spec.table]
    scores = {}
    for options in (trainer.TrainOptions(), trainer.TrainOptions("recent_window", 60),
                    trainer.TrainOptions("recency_weighted", half_life_days=30),
                    trainer.TrainOptions("search")):
        result = trainer.train_one(spec, table, threshold=0.5, options=options)
        assert result.ok, result.error
        scores[options.strategy] = (result.score, result.rows_train)
    assert scores["recent_window"][1] < scores["full"][1]
    assert len({s for s, _ in scores.values()}) > 1
    with pytest.raises(ValueError, match="strategies are"):
        trainer.TrainOptions("magic")


def test_an_eighteenth_model_needs_only_a_spec(small_tables: dict) -> None:
    extra = specs.ModelSpec("demurrage_risk", "risk_decision", "shipments",
                            ("distance_km", "mode", "weather", "traffic", "tonnage"),
                            "demurrage_cost", "regression", "r2", "Demurrage in INR.",
                            threshold=0.1)
    [result] = trainer.train_many([extra], small_tables, thresholds={extra.name: 0.1},
                                  n_jobs=1)
    assert result.ok and result.score > result.baseline
    summary = summarize([result], timestamp="t", duration_seconds=1)
    assert "demurrage_risk" in summary["model_details"]["risk_decision_models"]


@pytest.mark.slow
def test_dask_cluster_gives_the_same_scores_as_loky(small_tables: dict) -> None:
    distributed = pytest.importorskip("distributed")
    chosen = [specs.get_spec(n) for n in ("scenario_analysis", "predictive_maintenance",
                                          "supplier_performance", "cost_optimization")]
    with trainer.parallel_backend("loky"):
        local = trainer.train_many(chosen, small_tables, thresholds=thresholds_for(chosen),
                                   n_jobs=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with trainer.parallel_backend("dask", cluster.scheduler_address):
            remote = trainer.train_many(chosen, small_tables,
                                        thresholds=thresholds_for(chosen), n_jobs=2)
    assert [r.name for r in remote] == [r.name for r in local]
    for a, b in zip(local, remote, strict=True):
        assert b.ok and a.score == pytest.approx(b.score, abs=1e-9), a.name
