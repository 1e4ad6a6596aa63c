"""The check estimates a score while labels are pending, and realizes it once they arrive.

A real database and real fits (tests/estimate_world.py): the newest shipments' outcomes are
withheld by an UPDATE, the real check runs. The tests run in file order on one world:
estimate, warn, realize, then retrain on an estimate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor

from backend.ml.data import loading, synthetic
from backend.ml.fleet import specs
from backend.ml.monitoring import estimate as est
from backend.ml.monitoring.check import Monitor
from backend.ml.monitoring.health import Health, read_fleet
from backend.ml.monitoring.loss_estimation import LOSS_MODEL_PARAMS, TreeEnsemble
from backend.ml.monitoring.state import read_state
from backend.ml.registry.store import SignatureError
from tests.estimate_world import (
    ANOMALY,
    CLASSIFIER,
    REGRESSOR,
    PendingWorld,
    build,
    restore_labels,
    withhold_labels,
)

HIGH = {CLASSIFIER: 0.95, REGRESSOR: 0.97}  # thresholds no estimate here reaches


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PendingWorld, list]]:
    world = build(tmp_path_factory.mktemp("pending"))
    yield world, withhold_labels(world)


def check(world: PendingWorld, **settings: Any) -> dict[str, Any]:
    return Monitor(world.runner(**settings), backoff_seconds=0).run_check()


def test_pending_labels_are_estimated_with_an_interval_never_as_a_score(
        world: tuple[PendingWorld, list]) -> None:
    pending, saved = world
    entry = check(pending)["models"]
    for name, method in ((CLASSIFIER, est.CBPE), (REGRESSOR, est.DLE)):
        got = entry[name]
        assert got["verdict"] == "estimated", got
        assert got["estimated_low"] <= got["estimated_value"] <= got["estimated_high"], got
        assert got["estimated_high"] - got["estimated_low"] > 0
        assert got["estimate_method"] == method and got["estimated_rows"] >= 100, got
        assert got["samples"] == 0 and "live_score" not in got and "score" not in got, got
    assert "estimated_value" not in entry[ANOMALY]
    assert "anomaly detector's roc_auc is not estimated" in entry[ANOMALY]["estimate_note"]
    state = read_state(pending.settings().LOGS_DIR)
    assert state.of(CLASSIFIER).estimate is not None
    assert state.of(CLASSIFIER).verdict is None  # an estimate is not a standing verdict
    fleet = {s.name: s for s in read_fleet(pending.runner().services.store, pending.settings())}
    assert fleet[CLASSIFIER].health.state is Health.HEALTHY  # estimated above threshold


def test_the_estimator_travels_inside_the_signed_metadata(
        world: tuple[PendingWorld, list]) -> None:
    pending, _ = world
    store = pending.runner().services.store
    meta = store.verify(REGRESSOR, "v0001")
    state = meta["performance_estimator"]
    assert state["method"] == est.DLE and state["loss"]["model"]["trees"]
    path = store.meta_path(REGRESSOR, "v0001")
    original = path.read_bytes()
    tampered = json.loads(original)
    tampered["performance_estimator"]["loss"]["relative_spread"] = 0.0  # a narrower interval
    path.write_text(json.dumps(tampered))
    try:
        with pytest.raises(SignatureError):
            store.verify(REGRESSOR, "v0001")
    finally:
        path.write_bytes(original)
    pipeline, _ = store.load(REGRESSOR)
    with pytest.raises(est.EstimationError, match="cannot be used: it is a cbpe estimator"):
        est.restore(specs.get_spec(REGRESSOR), {**state, "method": "cbpe"}, pipeline)
    with pytest.raises(est.EstimationError, match="carries no performance estimator"):
        est.restore(specs.get_spec(REGRESSOR), None, pipeline)


def test_the_plain_number_loss_model_predicts_exactly_what_the_booster_does() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 6))
    X[::9, 2] = np.nan
    y = np.abs(X[:, 0]) + rng.normal(size=3000) ** 2
    booster = HistGradientBoostingRegressor(**LOSS_MODEL_PARAMS).fit(X, y)
    plain = TreeEnsemble.restore(json.loads(json.dumps(TreeEnsemble.of(booster).state())))
    assert np.array_equal(plain.predict(X), booster.predict(X))


def test_an_estimated_drop_warns_and_does_not_retrain_by_default(
        world: tuple[PendingWorld, list]) -> None:
    pending, _ = world
    history = pending.runner().services.history
    runs_before = len(history.trainings(limit=100))
    entry = check(pending, MODEL_THRESHOLDS=HIGH)["models"]
    for name in (CLASSIFIER, REGRESSOR):
        got = entry[name]
        assert got["verdict"] == "estimated_below_threshold", got
        assert got["estimated_high"] < got["threshold"] and "retrain" not in got, got
    assert len(history.trainings(limit=100)) == runs_before
    alerts = [a for a in history.alerts() if a["kind"] == "estimated_below_threshold"]
    assert {a["model"] for a in alerts} == {CLASSIFIER, REGRESSOR}
    assert {a["level"] for a in alerts} == {"warning"}
    settings = pending.settings(MODEL_THRESHOLDS=HIGH)
    fleet = {s.name: s for s in read_fleet(pending.runner().services.store, settings)}
    assert fleet[CLASSIFIER].health.state is Health.ESTIMATED_BELOW_THRESHOLD
    assert "estimated" in fleet[CLASSIFIER].health.reason
    assert not fleet[CLASSIFIER].health.degraded


def test_labels_arriving_record_the_realized_score_beside_the_estimate(
        world: tuple[PendingWorld, list]) -> None:
    pending, saved = world
    estimated = check(pending)
    restore_labels(pending, saved)
    # Later days settle the outcomes the simulation itself still held back.
    synthetic.simulate(loading.writable_engine(pending.url), days=10)
    entry = check(pending)["models"]
    for name in (CLASSIFIER, REGRESSOR):
        got = entry[name]
        assert got["verdict"] in ("healthy", "watch"), got  # labels decide again
        assert "estimated_value" not in got
        records = {r["estimate_check_id"]: r for r in got["realized"]}
        record = records[estimated["check_id"]]
        assert record["estimated_value"] == estimated["models"][name]["estimated_value"]
        assert record["estimation_error"] == pytest.approx(
            record["estimated_value"] - record["realized_value"], abs=1e-6)
        assert abs(record["estimation_error"]) < 0.1, record
        assert record["realized_rows"] >= 0.9 * estimated["models"][name]["estimated_rows"]
        assert read_state(pending.settings().LOGS_DIR).of(name).awaiting_labels == []
    assert "realized" not in entry[ANOMALY]


def test_estimate_action_retrain_retrains_on_an_estimated_drop(
        world: tuple[PendingWorld, list], tmp_path: Path) -> None:
    pending, _ = world
    withhold_labels(pending)
    entry = check(pending, MODEL_THRESHOLDS={CLASSIFIER: HIGH[CLASSIFIER]},
                  ESTIMATE_ACTION="retrain", MAX_RETRAIN_ATTEMPTS=1)["models"][CLASSIFIER]
    assert entry["verdict"] == "estimated_below_threshold", entry
    assert [a["strategy"] for a in entry["retrain"]["attempts"]] == ["full"], entry
    newest = pending.runner().services.history.trainings(limit=1)[0]
    assert newest["trigger"] == "retrain" and newest["models"] == [CLASSIFIER]
