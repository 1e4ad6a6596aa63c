"""A small world whose newest shipments' labels are pending, for the estimate tests.

Three shipment models are trained (a classifier, a regressor, the anomaly detector), a few
days are simulated, and the outcomes of every shipment the versions never learnt from
(newer than their windows, or labelled after their training read the labels) are withheld
by a direct UPDATE (target and `labelled_at` NULL: what a pending label looks like);
`restore_labels` writes them back as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from backend.ml.config import Settings
from backend.ml.data import loading, schema, synthetic
from backend.ml.data.labels import LABELLED_AT
from backend.ml.fleet import specs
from backend.ml.monitoring.fresh import learnt_labels_until
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from tests.conftest import make_database

CLASSIFIER, REGRESSOR, ANOMALY = "customer_satisfaction", "delay_prediction", "anomaly_detection"
MODELS = [CLASSIFIER, REGRESSOR, ANOMALY]
TABLE = "shipments"


@dataclass
class PendingWorld:
    root: Path
    url: str
    cut: pd.Timestamp  # the oldest training window's end: newer shipments are fresh
    # the oldest newest-label a training read: shipments labelled after it are fresh too
    learnt: pd.Timestamp = pd.Timestamp.max

    def settings(self, **extra: Any) -> Settings:
        values: dict[str, Any] = {"DATABASE_URL": self.url, "MODELS_DIR": self.root / "models",
                                  "LOGS_DIR": self.root / "logs", "TRAINING_N_JOBS": 2,
                                  "SCHEDULER_ENABLED": False, **extra}
        return Settings(**values)

    def runner(self, **extra: Any) -> Runner:
        return Runner(Services.from_settings(self.settings(**extra)))


def outcome_columns() -> list[str]:
    """The shipment columns the three models' targets come from, and `labelled_at`."""
    columns = [c for name in MODELS for s in [specs.get_spec(name)]
               for c in s.derived.get(s.target, (s.target,))]
    return [*dict.fromkeys(columns), LABELLED_AT]


def build(root: Path, *, days: int = 200, fresh_days: int = 6) -> PendingWorld:
    url = make_database(root / "pending.db", days=days, end=date(2026, 3, 1))
    world = PendingWorld(root, url, pd.Timestamp.min)
    summary = world.runner().run(models=MODELS, trigger="daily", actor="scheduler")
    assert summary["status"] == "success", summary["errors"]
    synthetic.simulate(loading.writable_engine(url), days=fresh_days)
    store = world.runner().services.store
    world.cut = min(pd.Timestamp(store.production_meta(n)["data_end"]) for n in MODELS)
    world.learnt = min(pd.Timestamp(str(learnt_labels_until(store.production_meta(n))))
                       for n in MODELS)
    return world


def withhold_labels(world: PendingWorld) -> list[dict[str, Any]]:
    """NULL the outcomes of every fresh shipment; the rows as they were, to restore."""
    table = schema.get_table(TABLE)
    tcol = table.c[schema.time_column(TABLE)]
    columns = outcome_columns()
    engine = loading.writable_engine(world.url)
    fresh = sa.or_(tcol > world.cut.to_pydatetime(),
                   table.c[LABELLED_AT] > world.learnt.to_pydatetime())
    with engine.begin() as conn:
        saved = [dict(r._mapping) for r in conn.execute(
            sa.select(table.c.id, *(table.c[c] for c in columns)).where(fresh))]
        conn.execute(table.update().where(fresh).values(dict.fromkeys(columns)))
    assert saved, "no fresh shipments to withhold"
    return saved


def restore_labels(world: PendingWorld, saved: list[dict[str, Any]]) -> None:
    table = schema.get_table(TABLE)
    with loading.writable_engine(world.url).begin() as conn:
        conn.execute(table.update().where(table.c.id == sa.bindparam("row_id")),
                     [{**{k: v for k, v in row.items() if k != "id"}, "row_id": row["id"]}
                      for row in saved])
