"""Engines on the logistics database and read-only loading of its tables.

The scheduler only reads: SQLite is opened with `mode=ro`, PostgreSQL sessions with
`default_transaction_read_only`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from backend.ml.data.schema import DataError, get_table, time_column


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


def load_table(engine: Engine, name: str, *, window: Window = Window(),
               columns: Iterable[str] | None = None, chunksize: int = 100_000) -> pd.DataFrame:
    """Read one table (or some of its columns) in event-time order, chunk by chunk.

    String columns become pandas categoricals chunk by chunk, which keeps a million
    shipments within a few hundred MB.
    """
    table = get_table(name)
    tcol = time_column(name)
    wanted = [str(c) for c in (columns if columns is not None else table.columns.keys())]
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise DataError(f"table {name!r} has no column {', '.join(missing)}")
    if tcol not in wanted:
        wanted.insert(0, tcol)
    query = sa.select(*(table.c[c] for c in wanted)).order_by(
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
                chunk = pd.DataFrame.from_records(rows, columns=wanted)
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
    return frame


def newest_time(engine: Engine, name: str) -> datetime | None:
    table = get_table(name)
    with engine.connect() as conn:
        value = conn.execute(sa.select(sa.func.max(table.c[time_column(name)]))).scalar()
    return None if value is None else pd.Timestamp(value).to_pydatetime()
