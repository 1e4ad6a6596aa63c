"""Labels arrive late: the generated world writes an outcome only once the plant would know
it, later days fill the held ones in, and training and the check read no label that became
known after the time they run at."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from backend.ml.backtest.world import SimClock
from backend.ml.config import Settings
from backend.ml.data import loading, schema, synthetic
from backend.ml.data.labels import LABELLED_AT, LabelState
from backend.ml.data.synthetic import pending
from backend.ml.fleet import specs
from backend.ml.monitoring.check import Monitor
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services

END = date(2026, 3, 31)
DAYS = 90
PER_DAY = 40  # shipments a day: enough rows for the models below, quick to build
SEED = 5
WORLD_NOW = pd.Timestamp(END) + pd.Timedelta(days=1)  # the last day's end
# A run a week before the world's now: shipments settled since and the last week's demand
# are on file but were not known then.
TRAINED_AT = datetime(2026, 3, 25, 1, 0, tzinfo=UTC)
CHECKED_AT = TRAINED_AT + timedelta(days=3)
MODELS = ["fuel_consumption", "demand_forecasting"]  # a settled outcome; lags of outcomes
REAL_LOAD = loading.load_table  # the loader itself, whatever a test's spy wraps it in


def build(url: str, *, days: int = DAYS) -> Engine:
    engine = loading.writable_engine(url)
    synthetic.init_db(engine, days=days, end=END, seed=SEED, shipments_per_day=PER_DAY,
                      force=True)  # the session's PostgreSQL database may hold another world
    return engine


@pytest.fixture(scope="module")
def world_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "logistics.db"
    build(f"sqlite:///{path}").dispose()
    return path


@pytest.fixture
def db_copy(world_db: Path, tmp_path: Path) -> str:
    shutil.copy(world_db, tmp_path / "logistics.db")
    return f"sqlite:///{tmp_path / 'logistics.db'}"


def raw_rows(engine: Engine, name: str) -> pd.DataFrame:
    """A table as stored, in id order (the order `generate` gave its rows)."""
    table = schema.TABLES[name]
    return pd.read_sql(sa.select(table).order_by(table.c.id), engine)


def assert_rows_match_truth(db: pd.DataFrame, truth: pd.DataFrame, name: str,
                            now: pd.Timestamp) -> pd.Series:
    """The stored rows are the one-shot generation's with exactly the outcomes due by
    `now`; returns which rows are labelled."""
    due = (truth[LABELLED_AT] <= now).to_numpy()
    labelled = db[LABELLED_AT].notna().to_numpy()
    assert (labelled == due).all(), name
    assert (db.loc[labelled, LABELLED_AT].to_numpy()
            == truth.loc[due, LABELLED_AT].to_numpy()).all(), name
    for column in schema.outcome_columns(name):
        assert db.loc[~labelled, column].isna().all(), (name, column)
        stored = db.loc[labelled, column].tolist()
        assert stored == truth.loc[due, column].tolist(), (name, column)
    return pd.Series(labelled)


def test_the_newest_rows_wait_for_their_labels_and_a_later_day_fills_in_those_due(
        db_copy: str) -> None:
    engine = loading.writable_engine(db_copy)
    truth = synthetic.generate(END - timedelta(days=DAYS - 1), DAYS, seed=SEED,
                               shipments_per_day=PER_DAY)
    before: dict[str, pd.Series] = {}
    with engine.connect() as conn:
        held = pending.count_pending(conn)
    for name in schema.GENERATED:
        before[name] = assert_rows_match_truth(raw_rows(engine, name), truth[name], name,
                                               WORLD_NOW)
        assert held.get(name, 0) == int((~before[name]).sum()), name
    # the shipments not settled yet, a month of telemetry, February's and March's ratings
    # (January's came in today, three months on) and the last day's decisions wait; every
    # day's demand is known at its end
    assert held["shipments"] > 3 * PER_DAY
    assert 9 * 120 < held["equipment_telemetry"] <= 10 * 120
    assert held["supplier_scorecards"] == 2 * 40 and held["dispatch_decisions"] == 12
    assert "daily_demand" not in held
    ships = raw_rows(engine, "shipments")
    week_old = ships["dispatched_at"] < WORLD_NOW - pd.Timedelta(days=7)
    assert ships.loc[week_old, LABELLED_AT].notna().all()  # delivered and settled
    last_day = ships["dispatched_at"] >= WORLD_NOW - pd.Timedelta(days=1)
    assert last_day.any() and ships.loc[last_day, LABELLED_AT].isna().all()

    synthetic.simulate(engine, days=1, seed=SEED, shipments_per_day=PER_DAY)
    later = WORLD_NOW + pd.Timedelta(days=1)
    for name in schema.GENERATED:
        first = raw_rows(engine, name).head(len(truth[name])).reset_index(drop=True)
        after = assert_rows_match_truth(first, truth[name], name, later)
        filled = int((after & ~before[name]).sum())
        assert not (before[name] & ~after).any(), name  # nothing known is forgotten
        if name in ("shipments", "equipment_telemetry", "dispatch_decisions"):
            assert filled > 0, name
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(pending.pending_outcomes)
                            .where(pending.pending_outcomes.c.due_at <= later)).scalar() == 0


Load = tuple[str, dict[str, Any], pd.DataFrame]


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Load]:
    """Every table the code under test loads, with the arguments it asked for: the real
    loader runs, this only keeps what it returned."""
    seen: list[Load] = []
    real = loading.load_table

    def spy(engine: Engine, name: str, **kwargs: Any) -> pd.DataFrame:
        frame = real(engine, name, **kwargs)
        seen.append((name, kwargs, frame))
        return frame

    monkeypatch.setattr(loading, "load_table", spy)
    return seen


def assert_no_label_after(load: Load, url: str, as_of: datetime) -> int:
    """A loaded frame equals the stored rows with the outcomes known after `as_of` blanked;
    returns how many stored labels it had to hide."""
    name, kwargs, frame = load
    assert kwargs["labels_as_of"] == as_of, name
    unmasked = REAL_LOAD(loading.open_readonly(url), name,
                         **{**kwargs, "labels_as_of": None,
                            "columns": [c for c in frame.columns if c != LABELLED_AT]})
    cutoff = pd.Timestamp(as_of).tz_convert(UTC).tz_localize(None)
    later = ~(unmasked[LABELLED_AT] <= cutoff)
    for column in set(schema.outcome_columns(name)) & set(frame.columns):
        expected = unmasked[column].astype(object).where(~later, None)
        assert frame[column].isna().equals(expected.isna()), (name, column)
        known = frame[column].notna()
        assert (frame.loc[known, LABELLED_AT] <= cutoff).all(), (name, column)
    return int((later & unmasked[LABELLED_AT].notna()).sum())


def test_a_run_and_a_check_read_no_label_known_after_their_time(
        db_copy: str, tmp_path: Path, loads: list[Load]) -> None:
    settings = Settings(DATABASE_URL=db_copy, MODELS_DIR=tmp_path / "models",
                        LOGS_DIR=tmp_path / "logs", TRAINING_N_JOBS=1)
    runner = Runner(Services.from_settings(settings), clock=SimClock(TRAINED_AT))
    summary = runner.run(models=MODELS)
    assert summary["status"] == "success", summary["errors"]
    hidden = {load[0]: assert_no_label_after(load, db_copy, TRAINED_AT) for load in loads}
    assert set(hidden) == {"shipments", "daily_demand"}
    assert all(n > 0 for n in hidden.values()), hidden  # there were labels to peek at
    trained_until = pd.Timestamp(TRAINED_AT).tz_localize(None)
    for name in MODELS:
        meta = runner.services.store.metadata(name, "v0001")
        assert pd.Timestamp(meta["training_data"]["labels_as_of"]) <= trained_until, name
        assert pd.Timestamp(meta["data_end"]) <= trained_until, name
    # demand's lags read only the days whose orders were known: the 25th's were not
    demand = next(frame for name, _, frame in loads if name == "daily_demand")
    lags = specs.get_spec("demand_forecasting").frame(demand.drop(columns=[LABELLED_AT]))
    day = lags["demand_date"].dt.normalize()
    assert lags.loc[day == pd.Timestamp("2026-03-26"), "lag_1"].isna().all()
    assert lags.loc[day == pd.Timestamp("2026-03-25"), "lag_1"].notna().all()

    loads.clear()
    entry = Monitor(runner, clock=SimClock(CHECKED_AT), retrain=False).run_check()
    assert {load[0] for load in loads} == {"shipments", "daily_demand"}
    for load in loads:
        assert_no_label_after(load, db_copy, CHECKED_AT)
    # the check scored fuel_consumption on exactly the shipments settled by its time that
    # the version never learnt: newer than its window, or labelled after its training
    meta = runner.services.store.metadata("fuel_consumption", "v0001")
    data_end, learnt = meta["data_end"], meta["training_data"]["labels_as_of"]
    stored = REAL_LOAD(loading.open_readonly(db_copy), "shipments",
                       columns=["dispatched_at", "fuel_litres"])
    unlearnt = (stored["dispatched_at"] > pd.Timestamp(data_end)) | (
        stored[LABELLED_AT] > pd.Timestamp(learnt))
    settled = stored[unlearnt
                     & (stored[LABELLED_AT] <= pd.Timestamp(CHECKED_AT).tz_localize(None))]
    assert (settled["dispatched_at"] <= pd.Timestamp(data_end)).any()  # labelled late
    later = stored[stored["dispatched_at"] > pd.Timestamp(data_end)]
    assert 0 < len(settled) < later["fuel_litres"].notna().sum()
    assert entry["models"]["fuel_consumption"]["samples"] == len(settled)


def test_a_label_not_yet_known_is_pending_and_one_known_absent_is_missing(
        db_copy: str) -> None:
    engine = loading.writable_engine(db_copy)
    with engine.begin() as conn:  # the plant learnt this shipment will have no fuel figure
        conn.execute(sa.text("update shipments set fuel_litres = null where id = 5"))
        held = pending.count_pending(conn)["shipments"]
    frame = loading.load_table(loading.open_readonly(db_copy), "shipments",
                               columns=["id", "fuel_litres"], labels_as_of=WORLD_NOW)
    state = loading.label_state(frame, "fuel_litres")
    assert state[frame["id"] == 5].tolist() == [LabelState.MISSING]
    assert (state == LabelState.MISSING).sum() == 1
    assert (state == LabelState.PENDING).sum() == held
    assert (state[frame[LABELLED_AT].isna()] == LabelState.PENDING).all()
    # asked about an earlier time, the rows settled since are pending, not missing
    earlier = loading.load_table(loading.open_readonly(db_copy), "shipments",
                                 columns=["fuel_litres"], labels_as_of=TRAINED_AT)
    assert (loading.label_state(earlier, "fuel_litres") == LabelState.PENDING).sum() > held


def test_a_database_of_an_earlier_release_loads_as_before(db_copy: str) -> None:
    engine = loading.writable_engine(db_copy)
    with engine.begin() as conn:  # what an earlier release's init-db made: no label times
        for name in schema.GENERATED:
            conn.execute(sa.text(f"alter table {name} drop column {LABELLED_AT}"))
        conn.execute(sa.text("update shipments set fuel_litres = 1.0 where fuel_litres is null"))
    reader = loading.open_readonly(db_copy)
    assert not loading.has_label_times(reader, "shipments")
    frame = loading.load_table(reader, "shipments", labels_as_of=TRAINED_AT)
    assert LABELLED_AT not in frame.columns
    assert frame["fuel_litres"].notna().all()  # every label on file counts as known
    assert set(loading.label_state(frame, "delay_hours")) == {LabelState.KNOWN,
                                                              LabelState.MISSING}
    assert frame.attrs["labels_as_of"] == "2026-03-25T01:00:00"
    with pytest.raises(schema.DataError, match="earlier release.*init-db --force"):
        synthetic.simulate(engine, days=1, seed=SEED, shipments_per_day=PER_DAY)


@pytest.mark.postgres
def test_postgresql_holds_back_masks_and_fills_in_the_same_way(postgres_url: str) -> None:
    engine = build(postgres_url, days=40)
    with engine.connect() as conn:
        held = pending.count_pending(conn)
    assert held["shipments"] > 0 and "daily_demand" not in held
    reader = loading.open_readonly(postgres_url)
    masked = loading.load_table(reader, "shipments", labels_as_of=TRAINED_AT)
    assert (masked.loc[masked["delay_hours"].notna(), LABELLED_AT]
            <= pd.Timestamp(TRAINED_AT).tz_localize(None)).all()
    unmasked = loading.load_table(reader, "shipments")
    assert masked["delay_hours"].notna().sum() < unmasked["delay_hours"].notna().sum()
    assert (loading.label_state(unmasked, "delay_hours") == LabelState.PENDING).sum() == \
        held["shipments"]
    filled = synthetic.simulate(engine, days=1, seed=SEED, shipments_per_day=PER_DAY)
    assert filled["shipments"] > 0
    after = loading.load_table(reader, "shipments")
    assert after["delay_hours"].notna().sum() > unmasked["delay_hours"].notna().sum()
