"""Outcomes the plant does not know yet: generated with their rows, held back until due.

The world is generated whole (every outcome, and when it becomes known: `labelled_at`), but
the database receives an outcome only once the world's clock (the newest generated day's
end) has reached its `labelled_at`. Until then the row's outcomes are NULL, its
`labelled_at` NULL, and the outcomes wait in `pending_outcomes` (row id, due time, the
outcomes as JSON). A later `simulate` moves the rows whose time has come into their table.

`pending_outcomes` is in its own metadata, not in `schema.metadata`: the scheduler's
loading cannot name it, and only this package writes or reads it. It holds the world's
future, not the plant's data: a real deployment's database has no such table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from backend.ml.data import schema
from backend.ml.data.labels import LABELLED_AT

metadata = sa.MetaData()

pending_outcomes = sa.Table(
    "pending_outcomes", metadata,
    sa.Column("table_name", sa.String(40), primary_key=True),
    sa.Column("row_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("due_at", sa.DateTime, nullable=False),
    sa.Column("outcomes", sa.Text, nullable=False),
    sa.Index("ix_pending_outcomes_due_at", "due_at"),
)


def not_due(frame: pd.DataFrame, now: pd.Timestamp) -> np.ndarray:
    """Which rows of a generated frame the plant does not know the outcomes of at `now`."""
    return np.asarray((frame[LABELLED_AT] > now).to_numpy())


def withhold(name: str, frame: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    """The frame as the database receives it at `now`: outcomes and `labelled_at` of the
    rows not yet due blanked (they go to `pending_outcomes` once the rows have ids)."""
    held = not_due(frame, now)
    if not held.any():
        return frame
    out = frame.copy()
    for column in (*schema.outcome_columns(name), LABELLED_AT):
        out[column] = out[column].astype(object).where(~held, None)
    return out


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def hold(conn: Connection, name: str, ids: list[int], frame: pd.DataFrame,
         now: pd.Timestamp) -> int:
    """Keep the outcomes of `frame`'s rows not due at `now` (ids: the rows' ids, in the
    frame's order) until they are; how many were kept."""
    held = not_due(frame, now)
    if not held.any():
        return 0
    columns = schema.outcome_columns(name)
    rows = frame.loc[held, [*columns, LABELLED_AT]]
    row_ids = np.asarray(ids)[held]
    records = [{"table_name": name, "row_id": int(row_id),
                "due_at": pd.Timestamp(due).to_pydatetime(),
                "outcomes": json.dumps({c: _plain(v) for c, v in zip(columns, values,
                                                                     strict=True)})}
               for row_id, due, values in zip(row_ids, rows[LABELLED_AT],
                                              rows[columns].itertuples(index=False),
                                              strict=True)]
    conn.execute(pending_outcomes.insert(), records)
    return len(records)


def release(conn: Connection, now: pd.Timestamp) -> dict[str, int]:
    """Write into their tables the held outcomes due by `now` (and their `labelled_at`);
    how many rows per table. Nothing is released twice: released rows leave the table."""
    due = pending_outcomes.c.due_at <= now.to_pydatetime()
    held = conn.execute(sa.select(pending_outcomes).where(due).order_by(
        pending_outcomes.c.table_name, pending_outcomes.c.row_id)).all()
    by_table: dict[str, list[Mapping[str, Any]]] = {}
    for row in held:
        values = json.loads(row.outcomes)
        by_table.setdefault(row.table_name, []).append(
            {"v_id": row.row_id, "v_" + LABELLED_AT: row.due_at,
             **{f"v_{c}": v for c, v in values.items()}})
    for name, records in by_table.items():
        table = schema.TABLES[name]
        columns = (*schema.outcome_columns(name), LABELLED_AT)
        setting: dict[str, Any] = {c: sa.bindparam(f"v_{c}") for c in columns}
        conn.execute(table.update().where(table.c.id == sa.bindparam("v_id")).values(setting),
                     records)
    conn.execute(pending_outcomes.delete().where(due))
    return {name: len(records) for name, records in by_table.items()}


def count_pending(conn: Connection) -> dict[str, int]:
    """How many rows of each table wait for their outcomes."""
    if not sa.inspect(conn).has_table(pending_outcomes.name):
        return {}
    rows = conn.execute(sa.select(pending_outcomes.c.table_name, sa.func.count())
                        .group_by(pending_outcomes.c.table_name)).all()
    return {str(name): int(n) for name, n in rows}
