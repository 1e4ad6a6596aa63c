"""The synthetic database: determinism, append mode, overwrite refusal, drift scenarios."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa

from backend.ml.data import loading, schema, synthetic
from backend.ml.fleet import specs
from backend.ml.training import trainer
from tests.conftest import make_database


def test_generation_is_deterministic_and_in_the_plants_vocabulary() -> None:
    a = synthetic.generate(date(2026, 1, 1), 20, seed=7)
    b = synthetic.generate(date(2026, 1, 1), 20, seed=7)
    c = synthetic.generate(date(2026, 1, 1), 20, seed=8)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["shipments"].equals(c["shipments"])
    ships = a["shipments"]
    assert set(ships["mode"]) == {"RAIL", "ROAD"}
    assert set(ships["material"]) <= set(synthetic.MATERIALS)
    assert set(ships["destination"]) <= set(synthetic.DESTINATIONS)
    assert ships["dispatched_at"].is_monotonic_increasing
    assert 0.005 < ships["incident"].mean() < 0.05


def test_default_size_is_two_years_and_over_100k_shipments() -> None:
    tables = synthetic.generate(date(2024, 11, 1), 730, seed=42)
    assert len(tables["shipments"]) >= 100_000
    incidents = tables["shipments"]["incident"].mean()
    assert 0.01 <= incidents <= 0.03


def test_init_db_refuses_to_overwrite_without_force(tmp_path) -> None:
    url = make_database(tmp_path / "a.db", days=20)
    engine = loading.writable_engine(url)
    before = pd.read_sql("select count(*) as n from shipments", engine)["n"][0]
    with pytest.raises(synthetic.DatabaseExistsError, match="--force"):
        synthetic.init_db(engine, days=5, end=date(2026, 1, 1))
    assert pd.read_sql("select count(*) as n from shipments", engine)["n"][0] == before
    synthetic.init_db(engine, days=5, end=date(2026, 1, 1), force=True)
    assert pd.read_sql("select count(*) as n from shipments", engine)["n"][0] < before


def test_simulate_appends_after_the_newest_row(tmp_path) -> None:
    url = make_database(tmp_path / "b.db", days=30)
    engine = loading.writable_engine(url)
    newest = loading.newest_time(engine, "shipments")
    counts = synthetic.simulate(engine, days=2)
    assert counts["shipments"] > 0
    ships = loading.load_table(engine, "shipments")
    fresh = ships[ships["dispatched_at"] > newest]
    assert len(fresh) == counts["shipments"]
    assert fresh["dispatched_at"].min().date() == newest.date() + pd.Timedelta(days=1)
    with pytest.raises(ValueError, match="scenarios are"):
        synthetic.simulate(engine, days=1, scenario="alien_invasion")


def test_simulate_needs_a_database_first(tmp_path) -> None:
    engine = loading.writable_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(schema.DataError, match="init-db"):
        synthetic.simulate(engine, days=1)


def test_readonly_engine_cannot_write(small_db: str) -> None:
    engine = loading.readonly_engine(small_db)
    with pytest.raises(sa.exc.OperationalError, match="readonly"):
        with engine.begin() as conn:
            conn.execute(sa.text("delete from shipments"))


def test_unreachable_database_is_a_clear_error() -> None:
    engine = loading.readonly_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(schema.DataError, match="cannot read table 'shipments'.*127.0.0.1"):
        loading.load_table(engine, "shipments")


DRIFT_CASES = [(s.name, model) for s in synthetic.SCENARIOS.values() for model in s.targets]


@pytest.mark.slow
@pytest.mark.parametrize("scenario,model", DRIFT_CASES)
def test_drift_hurts_the_named_model_and_a_retrain_recovers_it(tmp_path, scenario: str,
                                                                model: str) -> None:
    url = make_database(tmp_path / "drift.db", days=240, end=date(2026, 6, 1))
    engine = loading.writable_engine(url)
    spec = specs.get_spec(model)
    threshold = specs.threshold_for(spec, 0.70)
    before = trainer.train_one(spec, loading.load_table(engine, spec.table), threshold=threshold)
    assert before.passed, before.score
    tcol = schema.time_column(spec.table)
    calm_until = loading.newest_time(engine, spec.table)
    synthetic.simulate(engine, days=120, scenario=scenario)
    table = loading.load_table(engine, spec.table)
    labelled, _ = trainer.labelled_frame(spec, table)
    # The drifted days only: the calm days' labels that came in meanwhile (telemetry's
    # last 30 days, say) would dilute what the scenario does.
    fresh = labelled[labelled[tcol] > pd.Timestamp(calm_until)]
    live = trainer.evaluate(spec, before.estimator, fresh)
    assert live < threshold, f"{model} still scores {live:.3f} after {scenario}"
    after = trainer.train_one(spec, table, threshold=threshold)
    assert after.passed and after.score > live, (live, after.score)
