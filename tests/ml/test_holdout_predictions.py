"""Production's kept holdout predictions: the gate reuses them for rows whose features are
unchanged and gets the very numbers it gets by predicting every row; a file that does not
verify is never read."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.ml.config import Settings
from backend.ml.data import schema
from backend.ml.fleet import specs
from backend.ml.registry import formats, predictions
from backend.ml.registry.signing import Signer
from backend.ml.runs.promote import compare_on_holdout, save_and_promote
from backend.ml.runs.services import Services
from backend.ml.training import trainer

SPEC = specs.get_spec("delay_prediction")


def holdout_of(result: trainer.TrainResult, table: pd.DataFrame) -> pd.DataFrame:
    spec = specs.get_spec(result.name)
    labelled, _ = trainer.labelled_frame(spec, table)
    return labelled[labelled[schema.time_column(spec.table)]
                    >= pd.Timestamp(result.holdout_start)]


def test_a_stored_version_predicts_its_holdout_exactly_as_its_fit_did(
        trained: dict[str, trainer.TrainResult], small_tables: dict) -> None:
    """What makes reuse sound: the fit's own holdout predictions are, to the bit, what the
    version loaded from its stored bytes predicts, for every model of the fleet."""
    checked = 0
    for result in trained.values():
        if not result.ok or result.holdout_values is None:
            continue
        spec = specs.get_spec(result.name)
        fmt, payload = formats.dump(spec, result.estimator)
        loaded = formats.load(spec, fmt, payload)
        X = holdout_of(result, small_tables[spec.table])[list(spec.features)]
        again = trainer.decision_values(spec, loaded, X)
        assert again.dtype == result.holdout_values.dtype, result.name
        assert np.array_equal(again, result.holdout_values), result.name
        checked += 1
    assert checked == len(specs.SPECS)


@pytest.fixture
def gated(small_tables: dict, tmp_path: Path) -> tuple[Services, trainer.TrainResult]:
    """delay_prediction promoted through the run's own path, and a second candidate."""
    settings = Settings(MODELS_DIR=tmp_path / "models", LOGS_DIR=tmp_path / "logs",
                        TRAINING_N_JOBS=1, SCHEDULER_ENABLED=False,
                        PROMOTION_BOOTSTRAP_RESAMPLES=300)
    services = Services.from_settings(settings)
    table = small_tables[SPEC.table]
    first = trainer.train_one(SPEC, table, threshold=0.0,
                              options=trainer.TrainOptions(params={"max_iter": 30}))
    save_and_promote(services, "run-1", [first], small_tables, actor="cli")
    second = trainer.train_one(SPEC, table, threshold=0.0,
                               options=trainer.TrainOptions(params={"max_iter": 40}))
    return services, second


def test_the_gate_reuses_productions_predictions_and_decides_on_the_same_numbers(
        gated: tuple[Services, trainer.TrainResult], small_tables: dict) -> None:
    services, candidate = gated
    memo_file = predictions.memo_path(services.store, SPEC.name, "v0001")
    assert memo_file.exists(), "a promoted version keeps its holdout predictions"

    reused = compare_on_holdout(services, candidate, small_tables)
    assert reused.keys is not None and reused.reused == len(reused.keys) > 1000

    # Some rows changed since production's fit: only those are predicted again
    table = small_tables[SPEC.table].copy()
    changed = holdout_of(candidate, table).index[::7]
    table.loc[changed, "distance_km"] = table.loc[changed, "distance_km"] + 1.0
    tables = {**small_tables, SPEC.table: table}
    partly = compare_on_holdout(services, candidate, tables)
    assert partly.reused == len(partly.keys) - len(changed)

    memo_file.unlink()
    for kept, case in ((reused, small_tables), (partly, tables)):
        predicted = compare_on_holdout(services, candidate, case)
        assert predicted.reused == 0
        assert kept.production == predicted.production
        assert kept.interval == predicted.interval and kept.interval is not None
        assert kept.worst == predicted.worst


def test_a_changed_or_foreign_file_is_ignored_and_every_row_predicted(
        gated: tuple[Services, trainer.TrainResult], small_tables: dict,
        caplog: pytest.LogCaptureFixture) -> None:
    services, candidate = gated
    store, features = services.store, list(SPEC.features)
    path = predictions.memo_path(store, SPEC.name, "v0001")
    whole = path.read_bytes()
    honest = compare_on_holdout(services, candidate, small_tables)

    path.write_bytes(whole[:-40] + bytes(40))  # the predictions changed, the header not
    with caplog.at_level(logging.WARNING):
        assert predictions.recall(store, SPEC.name, "v0001", features) is None
        changed = compare_on_holdout(services, candidate, small_tables)
    assert "was changed since it was written" in caplog.text
    assert changed.reused == 0 and changed.production == honest.production

    other = predictions.Memo(np.array([1, 2], dtype=np.uint64), np.array([0.5, 0.7]))
    foreign = Services.from_settings(services.settings.model_copy(
        update={"MODEL_SIGNING_KEY": "another-key-" + "7" * 40}))
    predictions.remember(foreign.store, SPEC.name, "v0001", features, other.keys,
                         other.values)  # signed with another key
    assert predictions.recall(store, SPEC.name, "v0001", features) is None
    assert compare_on_holdout(services, candidate, small_tables).reused == 0

    path.write_bytes(whole)
    assert predictions.recall(store, SPEC.name, "v0001", features[:-1]) is None  # other
    assert predictions.recall(store, SPEC.name, "v0001", features) is not None


def test_labels_round_trip_and_only_misses_are_predicted(tmp_path: Path) -> None:
    settings = Settings(MODELS_DIR=tmp_path / "models", LOGS_DIR=tmp_path / "logs",
                        MODEL_SIGNING_KEY="memo-key-" + "3" * 40)
    store = Services.from_settings(settings).store
    assert isinstance(store.signer, Signer)
    name = "route_optimization"
    (store.models_dir / name).mkdir(parents=True)
    store.meta_path(name, "v0001").write_text("{}")  # committed, as far as retention sees
    labels = np.array(["rail", "road", "rail", "multimodal"], dtype=object)
    keys = np.array([40, 10, 30, 20], dtype=np.uint64)
    stale = predictions.memo_path(store, name, "v0009")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a version retention deleted")
    torn = stale.parent / ".v0002.npz.k3j2.tmp"
    torn.write_bytes(b"a write cut short")
    assert predictions.remember(store, name, "v0001", ["a"], keys, labels) is not None
    assert not stale.exists() and not torn.exists()

    memo = predictions.recall(store, name, "v0001", ["a"])
    assert memo is not None and memo.values.dtype == object
    asked: list[int] = []

    def predict(rows: np.ndarray) -> np.ndarray:
        asked.append(int(rows.sum()))
        return np.array(["road"] * int(rows.sum()), dtype=object)

    values, reused = predictions.predicted(memo, np.array([30, 99, 10], dtype=np.uint64),
                                           predict)
    assert list(values) == ["rail", "road", "road"] and reused == 2 and asked == [1]
    assert (values == np.array(["rail", "x", "road"], dtype=object)).tolist() == [
        True, False, True]
