"""Replay: a stored version fitted again from the database's rows is the same model, until
rows inside its window change; then replay names where."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sklearn
import sqlalchemy as sa
from threadpoolctl import threadpool_limits

from backend.ml.config import Settings
from backend.ml.data import loading, synthetic
from backend.ml.fleet import specs
from backend.ml.registry import formats
from backend.ml.registry.rotation import sign_versions
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from backend.ml.training import replay, trainer
from backend.ml.training.fingerprint import model_hash
from tests.ml.test_cli import run_cli

MODEL = "fuel_consumption"  # a fast regression on shipments
OTHER = "customer_satisfaction"  # trained alongside, so the fits run in worker processes


@pytest.fixture(scope="module")
def trained_store(small_db: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MODELS_DIR of one run of two models on the session's database, fitted in loky
    workers: replay here, in this process, must still give the same hash."""
    root = tmp_path_factory.mktemp("replay")
    settings = Settings(DATABASE_URL=small_db, MODELS_DIR=root / "models",
                        LOGS_DIR=root / "logs", TRAINING_N_JOBS=2)
    summary = Runner(Services.from_settings(settings)).run(models=[MODEL, OTHER])
    assert summary["status"] == "success", summary["errors"]
    return root / "models"


@pytest.fixture
def database(small_db: str, tmp_path: Path) -> str:
    """A copy of the session's database this test may change."""
    source = loading.sqlite_path(small_db)
    assert source is not None
    shutil.copy(source, tmp_path / "logistics.db")
    return f"sqlite:///{tmp_path / 'logistics.db'}"


def store_of(models_dir: Path) -> Any:
    return Services.from_settings(Settings(MODELS_DIR=models_dir)).store


def replayed(models_dir: Path, url: str, version: str = "v0001") -> replay.Replay:
    return replay.replay(store_of(models_dir), loading.open_readonly(url), MODEL, version)


def test_a_stored_version_replays_to_the_same_model(trained_store: Path, small_db: str) -> None:
    meta = store_of(trained_store).metadata(MODEL, "v0001")
    recorded = meta["training_data"]
    assert recorded["table"] == "shipments" and recorded["rows"] > 1000
    assert recorded["train_options"] == {"strategy": "full", "window_days": None,
                                         "half_life_days": None, "params": {},
                                         "holdout_since": None}
    assert len(recorded["content_sha256"]) == 64 and len(meta["model_hash"]) == 32
    assert sum(n for n, _ in recorded["content_by_month"].values()) == recorded["rows"]
    assert recorded["window"][1] == meta["data_end"]
    # the hash survives the save: it is the stored model's, whatever the file format
    assert model_hash(store_of(trained_store).load(MODEL, "v0001")[0]) == meta["model_hash"]

    outcome = replayed(trained_store, small_db)
    assert outcome.verdict == replay.SAME and outcome.same, outcome
    assert outcome.replayed_hash == outcome.stored_hash == meta["model_hash"]
    assert outcome.rows == {"stored": recorded["rows"], "now": recorded["rows"]}
    assert outcome.changes == []


def test_rows_added_after_the_window_leave_the_replay_the_same(
        trained_store: Path, database: str) -> None:
    added = synthetic.simulate(loading.writable_engine(database), days=5)
    assert added["shipments"] > 0
    outcome = replayed(trained_store, database)
    assert outcome.verdict == replay.SAME, outcome.changes


def test_a_changed_row_inside_the_window_is_named_and_exits_1(
        trained_store: Path, database: str, tmp_path: Path) -> None:
    recorded = store_of(trained_store).metadata(MODEL, "v0001")["training_data"]
    first, last = (pd.Timestamp(t) for t in recorded["window"])
    middle = first + (last - first) / 2
    shipments = sa.table("shipments", sa.column("id"), sa.column("dispatched_at"),
                         sa.column("fuel_litres"))
    engine = loading.writable_engine(database)
    with engine.begin() as conn:
        row = conn.execute(sa.select(shipments.c.id, shipments.c.dispatched_at)
                           .where(shipments.c.dispatched_at >= middle.to_pydatetime(),
                                  shipments.c.fuel_litres.is_not(None))
                           .order_by(shipments.c.dispatched_at).limit(1)).one()
        conn.execute(sa.update(shipments).where(shipments.c.id == row.id)
                     .values(fuel_litres=shipments.c.fuel_litres * 3 + 500))
    month = pd.Timestamp(row.dispatched_at).strftime("%Y-%m")

    env = {"DATABASE_URL": database, "MODELS_DIR": str(trained_store),
           "LOGS_DIR": str(tmp_path / "logs")}
    proc = run_cli("replay", MODEL, "v0001", env=env)
    assert proc.returncode == 1, proc.stderr
    assert f"{MODEL} v0001: different" in proc.stdout
    assert f"content: rows changed inside {month}-01.." in proc.stdout, proc.stdout
    assert "(same count, " in proc.stdout and "changed     rows:" not in proc.stdout
    assert "estimator:" not in proc.stdout and "libraries:" not in proc.stdout
    as_json = json.loads(run_cli("replay", MODEL, "v0001", "--json", env=env).stdout)
    assert as_json["verdict"] == "different" and as_json["stored_hash"] != as_json[
        "replayed_hash"]
    assert as_json["rows"]["stored"] == as_json["rows"]["now"]


def test_an_unknown_version_is_one_line_exit_2(trained_store: Path, small_db: str) -> None:
    proc = run_cli("replay", MODEL, "v0042",
                   env={"DATABASE_URL": small_db, "MODELS_DIR": str(trained_store)})
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {MODEL} has no version v0042")
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""


def test_a_version_saved_before_training_data_compares_its_fingerprint(
        trained_store: Path, small_db: str, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained_store, models)
    store = store_of(models)
    estimator, meta = store.load(MODEL, "v0001")
    older = {k: v for k, v in meta.items() if k not in ("training_data", "model_hash")}
    fmt, payload = formats.dump(specs.get_spec(MODEL), estimator)
    saved = store.import_version(MODEL, payload, {**older, "format": fmt})

    outcome = replayed(models, small_db, saved["version"])
    assert outcome.verdict == replay.FINGERPRINT_SAME and outcome.same
    assert outcome.note is not None and "cannot be replayed exactly" in outcome.note
    assert "data fingerprint" in outcome.note and outcome.stored_hash is None


def test_another_estimator_or_library_is_named(trained_store: Path, small_db: str,
                                               tmp_path: Path) -> None:
    """A version recorded with other code and another scikit-learn (as an older release of
    this service would have written it) replays on the same rows to another model."""
    models = tmp_path / "models"
    shutil.copytree(trained_store, models)
    path = models / MODEL / "v0001.json"
    meta = json.loads(path.read_text())
    meta["training_data"]["estimator"]["params"]["model__max_iter"] = 150
    meta["libraries"]["scikit-learn"] = "1.0.2"
    meta["model_hash"] = "0" * 32
    path.write_text(json.dumps(meta))
    assert sign_versions(store_of(models), trust_existing=True)  # the operator vouches for the edit

    outcome = replayed(models, small_db)
    assert outcome.verdict == replay.DIFFERENT
    assert outcome.changes == ["estimator: params.model__max_iter 150 -> 200",
                               f"libraries: scikit-learn 1.0.2 -> {sklearn.__version__}"]


def _fast(spec: specs.ModelSpec) -> dict[str, Any]:
    """Fewer rounds, so 34 fits stay cheap; the seeds and every other setting are the spec's."""
    model = spec.make_estimator()[-1]
    rounds = "n_estimators" if "n_estimators" in model.get_params() else "max_iter"
    return {rounds: 20} if rounds in model.get_params() else {}


@pytest.mark.parametrize("name", specs.MODEL_NAMES)
def test_two_fits_of_a_spec_on_the_same_rows_have_one_model_hash(
        name: str, small_tables: dict[str, pd.DataFrame]) -> None:
    spec = specs.get_spec(name)
    table = small_tables[spec.table]
    table = table.tail(min(len(table), 6 * spec.min_samples))
    options = trainer.TrainOptions(params=_fast(spec))
    # One OpenMP thread: on a busy machine a team of threads per fit was up to 10x slower.
    # The thread count is not in the hash: the replay tests compare a fit made in a worker
    # process (fewer threads) with one made here.
    with threadpool_limits(1):
        first = trainer.train_one(spec, table, threshold=0.5, options=options)
        second = trainer.train_one(spec, table.copy(), threshold=0.5, options=options)
    assert first.ok and second.ok, first.error or second.error
    assert first.model_hash == second.model_hash == model_hash(first.estimator)
    assert model_hash(pickle.loads(pickle.dumps(first.estimator))) == first.model_hash
    assert first.training_data == second.training_data


@pytest.mark.parametrize("options", [
    trainer.TrainOptions(strategy="search"),
    trainer.TrainOptions(strategy="recency_weighted", half_life_days=20),
    trainer.TrainOptions(strategy="recent_window", window_days=30, params={"max_iter": 30}),
    trainer.TrainOptions(holdout_since="2026-10-25"),  # inside the last 3000 rows
], ids=["search", "recency_weighted", "recent_window", "holdout_since"])
def test_every_strategy_is_made_again_from_its_record(
        options: trainer.TrainOptions, small_tables: dict[str, pd.DataFrame]) -> None:
    spec = specs.get_spec(MODEL)
    table = small_tables[spec.table].tail(3000)
    with threadpool_limits(1):
        fitted = trainer.train_one(spec, table, threshold=0.5, options=options)
        assert fitted.ok, fitted.error
        again = trainer.train_one(spec, table, threshold=0.5,
                                  options=replay.recorded_options(fitted.training_data))
    assert fitted.ok and again.ok, fitted.error or again.error
    assert again.model_hash == fitted.model_hash
    assert fitted.training_data["train_options"]["strategy"] == options.strategy
