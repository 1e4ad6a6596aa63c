"""Shared fixtures: one small generated database and one training of all 17 per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from backend.ml.data import loading, synthetic
from backend.ml.fleet import specs
from backend.ml.training import trainer
from tests.peers import SMTPServer

SMALL_DAYS = 300
SMALL_END = date(2026, 10, 31)
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def make_database(path: Path, *, days: int = SMALL_DAYS, end: date = SMALL_END,
                  seed: int = 42) -> str:
    """A generated SQLite database file; returns its URL."""
    url = f"sqlite:///{path}"
    synthetic.init_db(loading.writable_engine(url), days=days, end=end, seed=seed)
    return url


def thresholds_for(chosen: list[specs.ModelSpec]) -> dict[str, float]:
    return {s.name: specs.threshold_for(s, 0.70) for s in chosen}


@pytest.fixture(scope="session", autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point every default path at a session folder: no test (nor a CLI process a test
    starts) may touch the repository's own database, models or logs."""
    root = tmp_path_factory.mktemp("state")
    saved = {k: os.environ.get(k) for k in ("DATABASE_URL", "MODELS_DIR", "LOGS_DIR",
                                            "MODEL_SIGNING_KEY_FILE")}
    os.environ.update(DATABASE_URL=f"sqlite:///{root / 'absent.db'}",
                      MODELS_DIR=str(root / "models"), LOGS_DIR=str(root / "logs"),
                      MODEL_SIGNING_KEY_FILE=str(root / "keys" / "model_signing.key"))
    try:
        yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def small_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_database(tmp_path_factory.mktemp("db") / "logistics.db")


@pytest.fixture(scope="session")
def small_tables(small_db: str) -> dict[str, object]:
    return trainer.load_tables(loading.readonly_engine(small_db), specs.SPECS.values())


@pytest.fixture(scope="session")
def trained(small_tables: dict) -> dict[str, trainer.TrainResult]:
    chosen = list(specs.SPECS.values())
    results = trainer.train_many(chosen, small_tables, thresholds=thresholds_for(chosen),
                                 n_jobs=2)
    return {r.name: r for r in results}


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    """A real SMTP server on 127.0.0.1 keeping every message it accepts."""
    server = SMTPServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server, dropped after the session."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT",
                             connect_args={"connect_timeout": 5})
    name = f"mlsched_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required for this test: {exc}")
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(
        hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name})
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
