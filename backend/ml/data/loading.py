"""Engines on the logistics database and read-only loading of its tables.

The scheduler only reads: SQLite is opened with `mode=ro`, PostgreSQL sessions with
`default_transaction_read_only`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from backend.ml.data.labels import LABELLED_AT, LabelState, as_naive_utc
from backend.ml.data.schema import DataError, get_table, outcome_columns, time_column


def describe_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported as given
        return url


def readonly_engine(url: str) -> Engine:
    """An engine that can only read: the scheduler never writes the business database."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        uri = f"sqlite:///file:{parsed.database}?mode=ro&uri=true"
        return sa.create_engine(uri)
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(url, connect_args={
            "options": "-c default_transaction_read_only=on", "connect_timeout": 5})
    return sa.create_engine(url)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database)
    return None


def open_readonly(url: str) -> Engine:
    """A read-only engine; a missing SQLite file is named instead of silently created."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise DataError(f"database file {path} does not exist; create it with "
                        "`python -m backend.ml init-db`")
    return readonly_engine(url)


def writable_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(url, connect_args={"connect_timeout": 5})
    return sa.create_engine(url)


@dataclass(frozen=True)
class Window:
    """A half-open event-time window [start, end); either side may be open."""

    start: datetime | None = None
    end: datetime | None = None


def has_label_times(engine: Engine, name: str) -> bool:
    """Whether the database's `name` records when its outcomes became known: a generated
    table made by this release does; a spec's own table or an earlier release's does not."""
    if LABELLED_AT not in get_table(name).columns:
        return False
    try:
        present = sa.inspect(engine).get_columns(name)
    except SQLAlchemyError:
        return False  # load_table names the unreadable table itself
    return any(c["name"] == LABELLED_AT for c in present)


def load_table(engine: Engine, name: str, *, window: Window = Window(),
               columns: Iterable[str] | None = None, chunksize: int = 100_000,
               labels_as_of: datetime | None = None) -> pd.DataFrame:
    """Read one table (or some of its columns) in event-time order, chunk by chunk.

    String columns become pandas categoricals chunk by chunk, which keeps a million
    shipments within a few hundred MB. Where the table records when its outcomes became
    known, `labelled_at` comes along; with `labels_as_of` the database itself returns
    every outcome (and `labelled_at`) of a row not labelled by then as NULL, so no label
    from after that time leaves it. Without `labelled_at` nothing is masked: a non-null
    outcome there counts as known. `frame.attrs["labels_as_of"]` says which labels the
    frame holds (`_labels_cutoff`), for the training record and a replay.
    """
    table = get_table(name)
    tcol = time_column(name)
    timed = has_label_times(engine, name)
    wanted = [str(c) for c in (columns if columns is not None else table.columns.keys())]
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise DataError(f"table {name!r} has no column {', '.join(missing)}")
    wanted = [c for c in wanted if c != LABELLED_AT]
    if tcol not in wanted:
        wanted.insert(0, tcol)
    if timed:
        wanted.append(LABELLED_AT)
    query = sa.select(*_masked(table, wanted, labels_as_of if timed else None)).order_by(
        table.c[tcol], *table.primary_key.columns)
    if window.start is not None:
        query = query.where(table.c[tcol] >= window.start)
    if window.end is not None:
        query = query.where(table.c[tcol] < window.end)
    strings = [c for c in wanted if isinstance(table.c[c].type, sa.String)]
    chunks: list[pd.DataFrame] = []
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(query)
            while rows := result.fetchmany(chunksize):
                # Plain tuples: handed SQLAlchemy's rows, pandas probes each for fields
                # and the frame takes twice as long (0.69 s against 0.29 s, 105,000 rows).
                chunk = pd.DataFrame.from_records(list(map(tuple, rows)), columns=wanted)
                for c in strings:
                    chunk[c] = chunk[c].astype("category")
                chunks.append(chunk)
    except SQLAlchemyError as exc:
        raise DataError(f"cannot read table {name!r} from "
                        f"{describe_url(engine.url.render_as_string())}: "
                        f"{str(exc.orig if hasattr(exc, 'orig') else exc).strip()}") from exc
    if not chunks:
        frame = pd.DataFrame({c: pd.Series(dtype="object") for c in wanted})
    else:
        frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
        for c in strings:  # concat of differing category sets falls back to object
            if frame[c].dtype != "category":
                frame[c] = frame[c].astype("category")
    frame[tcol] = pd.to_datetime(frame[tcol])
    if timed:
        frame[LABELLED_AT] = pd.to_datetime(frame[LABELLED_AT])
    frame.attrs["labels_as_of"] = _labels_cutoff(frame, timed, labels_as_of)
    return frame


def _labels_cutoff(frame: pd.DataFrame, timed: bool,
                   labels_as_of: datetime | None) -> str | None:
    """The time whose known labels a frame holds, as ISO text: the newest `labelled_at` it
    read (no later label can be on file unless one came after: loading again with this
    time reads the same labels, however many arrive later); without label times, the
    time asked (None: every label on file)."""
    if timed and frame[LABELLED_AT].notna().any():
        return str(frame[LABELLED_AT].max().isoformat())
    return None if labels_as_of is None else str(as_naive_utc(labels_as_of).isoformat())


def _masked(table: sa.Table, wanted: list[str],
            labels_as_of: datetime | None) -> list[sa.ColumnElement[Any]]:
    """The selected columns; with `labels_as_of`, outcomes and `labelled_at` of rows not
    labelled by then replaced by NULL in the query."""
    if labels_as_of is None:
        return [table.c[c] for c in wanted]
    as_of = as_naive_utc(labels_as_of).to_pydatetime()
    known = sa.and_(table.c[LABELLED_AT].is_not(None), table.c[LABELLED_AT] <= as_of)
    hidden = {*outcome_columns(table.name), LABELLED_AT}
    return [sa.case((known, table.c[c]), else_=sa.null()).label(c) if c in hidden
            else table.c[c] for c in wanted]


def label_state(frame: pd.DataFrame, column: str) -> pd.Series:
    """Per row, whether `column` (an outcome) is known, pending (not yet known when the
    frame was loaded) or missing (known to be absent). Without `labelled_at` in the frame
    (a table without label times) an absent outcome is missing, never pending."""
    known = frame[column].notna().to_numpy()
    pending = (frame[LABELLED_AT].isna().to_numpy() if LABELLED_AT in frame.columns
               else np.zeros(len(frame), dtype=bool))
    states = np.select([known, pending], [LabelState.KNOWN.value, LabelState.PENDING.value],
                       LabelState.MISSING.value)
    return pd.Series(states, index=frame.index, name=column)


def newest_time(engine: Engine, name: str) -> datetime | None:
    table = get_table(name)
    with engine.connect() as conn:
        value = conn.execute(sa.select(sa.func.max(table.c[time_column(name)]))).scalar()
    return None if value is None else pd.Timestamp(value).to_pydatetime()
