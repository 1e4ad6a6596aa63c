"""The same code against the real PostgreSQL server on 127.0.0.1:5432."""

from __future__ import annotations

from datetime import date

import pytest

from backend.ml.data import loading, synthetic
from backend.ml.fleet import specs
from backend.ml.training import trainer
from tests.conftest import thresholds_for

pytestmark = pytest.mark.postgres


def test_all_17_train_on_postgres(postgres_url: str) -> None:
    # force: the session's database may hold another test's world already
    counts = synthetic.init_db(loading.writable_engine(postgres_url), days=300,
                               end=date(2026, 10, 31), force=True)
    assert counts["shipments"] > 30_000
    engine = loading.readonly_engine(postgres_url)
    chosen = list(specs.SPECS.values())
    tables = trainer.load_tables(engine, chosen)
    results = trainer.train_many(chosen, tables, thresholds=thresholds_for(chosen), n_jobs=2)
    failures = {r.name: r.error for r in results if not r.ok}
    assert not failures
    for r in results:
        assert r.score > r.baseline, r.name
    with pytest.raises(synthetic.DatabaseExistsError):
        synthetic.init_db(loading.writable_engine(postgres_url), days=3)
