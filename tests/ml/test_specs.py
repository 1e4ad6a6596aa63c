"""The registry of 17 specs: names, lookups, and a leakage guard per spec."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.ml.data import schema
from backend.ml.fleet import specs
from backend.ml.training import trainer

EXPECTED_NAMES = {
    "delay_prediction", "cost_prediction", "demand_forecasting", "quality_prediction",
    "fuel_consumption", "route_optimization", "cost_optimization", "time_optimization",
    "vehicle_allocation", "material_recommendation", "risk_assessment", "decision_support",
    "anomaly_detection", "supplier_performance", "scenario_analysis",
    "predictive_maintenance", "customer_satisfaction",
}
ALL = sorted(specs.SPECS)


def test_names_are_the_contract() -> None:
    assert set(specs.SPECS) == EXPECTED_NAMES
    assert {s.group for s in specs.SPECS.values()} == set(specs.GROUPS)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(specs.UnknownModelError) as err:
        specs.get_spec("delay_predictor")
    assert "delay_predictor" in str(err.value) and "delay_prediction" in str(err.value)
    with pytest.raises(specs.UnknownModelError, match="'nope'"):
        specs.parse_names("cost_prediction,nope")
    assert specs.parse_names(None) == list(specs.SPECS)
    assert specs.parse_names(" cost_prediction ,cost_prediction") == ["cost_prediction"]


def test_thresholds_sit_below_bands_and_config_overrides() -> None:
    spec = specs.get_spec("scenario_analysis")
    assert specs.threshold_for(spec, 0.70) == 0.58
    assert specs.threshold_for(spec, 0.70, {"scenario_analysis": 0.5}) == 0.5
    assert specs.threshold_for(specs.get_spec("route_optimization"), 0.70) == 0.70


@pytest.mark.parametrize("name", ALL)
def test_no_feature_is_an_outcome_an_id_or_derived_from_the_target(name: str) -> None:
    spec = specs.get_spec(name)
    target_sources = {s.removesuffix("@lag") for s in spec.derived.get(spec.target, ())}
    targets = {spec.target} | target_sources
    for feature in spec.features:
        assert feature != spec.target
        if feature in spec.derived:
            sources = spec.derived[feature]
            for source in sources:
                if source.endswith("@lag"):
                    continue  # earlier rows only; checked by the perturbation test
                assert schema.column_role(spec.table, source) in ("context", "time"), (
                    f"{feature} reads {source}")
                assert not targets & ({source} | schema.lineage(spec.table, source))
        else:
            assert schema.column_role(spec.table, feature) == "context", feature
            assert not targets & schema.lineage(spec.table, feature), feature


@pytest.mark.parametrize("name", ALL)
def test_features_do_not_move_when_outcomes_of_the_same_rows_change(
        name: str, small_tables: dict) -> None:
    """Scramble every outcome of the newest day: that day's features must not change."""
    spec = specs.get_spec(name)
    table = small_tables[spec.table]
    tcol = schema.time_column(spec.table)
    newest_day = table[tcol].dt.normalize().max()
    rows = table[tcol] >= newest_day
    changed = table.copy()
    rng = np.random.default_rng(0)
    for col in schema.get_table(spec.table).columns:
        if col.info["role"] == "outcome" and col.name in changed:
            if pd.api.types.is_numeric_dtype(changed[col.name]):
                changed[col.name] = changed[col.name].astype(float)
                changed.loc[rows, col.name] = changed.loc[rows, col.name] * 3.7 + 11
            else:
                values = changed.loc[rows, col.name].to_numpy()
                changed.loc[rows, col.name] = rng.permutation(values)
    before, _ = trainer.labelled_frame(spec, table)
    after, _ = trainer.labelled_frame(spec, changed)
    keep = before[tcol] >= newest_day
    pd.testing.assert_frame_equal(
        before.loc[keep, list(spec.features)].reset_index(drop=True),
        after.loc[after[tcol] >= newest_day, list(spec.features)].reset_index(drop=True))


@pytest.mark.parametrize("name", ALL)
def test_no_single_feature_gives_the_answer_away(name: str, trained: dict,
                                                 small_tables: dict) -> None:
    """A feature that alone scores near perfect is the target in disguise."""
    spec = specs.get_spec(name)
    if spec.task == "anomaly":
        pytest.skip("unsupervised: no single-feature fit to compare")
    labelled, _ = trainer.labelled_frame(spec, small_tables[spec.table])
    labelled = labelled.tail(6000)
    train, holdout = trainer.time_split(labelled, schema.time_column(spec.table))
    full = trained[name].score
    for feature in spec.features:
        single = specs.ModelSpec(spec.name, spec.group, spec.table, (feature,), spec.target,
                                 spec.task, spec.metric, "probe")
        estimator = single.make_estimator(max_iter=30)
        estimator.fit(train[[feature]], trainer.target_values(spec, train[spec.target]))
        score = trainer.evaluate(single, estimator, holdout)
        assert score < 0.97, f"{feature} alone scores {score:.3f} (full model {full:.3f})"
