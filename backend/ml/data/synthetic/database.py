"""All five tables for a span of days, and the database they are written to.

`generate` is deterministic for its arguments; `init_db` fills an empty database and
`simulate` appends days after the newest row, optionally under a drift scenario. Both
write only the outcomes known by the newest day's end (`pending` holds the rest back and
writes them in when a later `simulate` reaches their time): the database never holds a
label the plant could not have yet.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from backend.ml.config import get_settings
from backend.ml.data import loading, schema
from backend.ml.data.labels import DEFAULT_DELAYS, LABELLED_AT, LabelDelays
from backend.ml.data.synthetic import pending
from backend.ml.data.synthetic.demand import make_daily_demand
from backend.ml.data.synthetic.dispatch import make_dispatch
from backend.ml.data.synthetic.scenarios import get_scenario
from backend.ml.data.synthetic.scorecards import make_scorecards
from backend.ml.data.synthetic.shipments import make_shipments
from backend.ml.data.synthetic.telemetry import make_telemetry
from backend.ml.data.synthetic.world import SHIPMENTS_PER_DAY, day_context, make_world


def generate(start: date, days: int, *, seed: int = 42, scenario: str | None = None,
             shipments_per_day: int = SHIPMENTS_PER_DAY,
             delays: LabelDelays = DEFAULT_DELAYS) -> dict[str, pd.DataFrame]:
    """All five tables for `days` days from `start`, deterministic for the arguments.

    Every outcome is in the frames, with `labelled_at`, when the plant learns it (by
    `delays`): the whole world, future included. What the database receives at a given
    time is `write_tables(..., world_now=...)`'s business.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    drift = get_scenario(scenario) if scenario else None
    world = make_world(seed)
    rng = np.random.default_rng([seed, start.toordinal(), days])
    day_index = pd.date_range(pd.Timestamp(start), periods=days, freq="D")
    ctx = day_context(day_index, rng, drift,
                      np.random.default_rng([seed, start.toordinal(), days, 1]))
    # Every table draws from the one stream in this order: reordering the calls would
    # change the rows a seed gives.
    tables = {
        "shipments": make_shipments(ctx, world, rng, shipments_per_day),
        "daily_demand": make_daily_demand(ctx, rng, seed),
        "equipment_telemetry": make_telemetry(ctx, world, rng),
        "supplier_scorecards": make_scorecards(ctx, world, rng),
        "dispatch_decisions": make_dispatch(ctx, rng),
    }
    for name, frame in tables.items():
        frame[LABELLED_AT] = (delays.labelled_at(name, frame) if len(frame)
                              else pd.Series(dtype="datetime64[ns]"))
    return tables


def world_now(tables: dict[str, pd.DataFrame]) -> pd.Timestamp:
    """The end of the newest generated day: what the plant knows is what is due by then."""
    newest = max(frame[schema.time_column(name)].max() for name, frame in tables.items()
                 if len(frame))
    return pd.Timestamp(newest).normalize() + pd.Timedelta(days=1)


class DatabaseExistsError(Exception):
    """`init-db` found data in the target database and was not told to replace it."""


def database_has_data(engine: Engine) -> bool:
    """Whether any generated table holds rows (a spec's own table does not count)."""
    inspector = sa.inspect(engine)
    present = [t for t in schema.GENERATED if inspector.has_table(t)]
    if not present:
        return False
    with engine.connect() as conn:
        return any(conn.execute(sa.select(sa.func.count()).select_from(schema.TABLES[t]))
                   .scalar() for t in present)


def write_tables(engine: Engine, tables: dict[str, pd.DataFrame], *,
                 world_now: pd.Timestamp | None = None,
                 progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Append frames to their tables in one transaction: all rows land, or none.

    With `world_now`, outcomes not known by then are held back (`pending`) and the held
    outcomes that have come due are written into their rows; without it, frames are
    written as they are.
    """
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        schema.metadata.create_all(conn)
        pending.metadata.create_all(conn)
        _refuse_without_label_times(conn, tables)
        for name, frame in tables.items():
            written = frame if world_now is None else pending.withhold(name, frame, world_now)
            written = written.astype(object).where(written.notna(), None)
            records = written.to_dict("records")
            table = schema.TABLES[name]
            before = conn.execute(sa.select(sa.func.max(table.c.id))).scalar() or 0
            for i in range(0, len(records), 50_000):
                conn.execute(table.insert(), records[i:i + 50_000])
            if world_now is not None and pending.not_due(frame, world_now).any():
                pending.hold(conn, name, _new_ids(conn, table, before, len(records)), frame,
                             world_now)
            counts[name] = len(records)
            if progress:
                progress(name, len(records))
        if world_now is not None:
            pending.release(conn, world_now)
    return counts


def _new_ids(conn: Connection, table: sa.Table, before: int, count: int) -> list[int]:
    """The ids the rows just inserted got, in insertion order. Ids grow in the order rows
    are inserted and this package is the tables' one writer, so they are the `count` ids
    after `before` (checked: anything else is refused, not guessed). A RETURNING insert
    would say the same but costs SQLite a statement per row."""
    ids = [int(i) for i in conn.execute(sa.select(table.c.id).where(table.c.id > before)
                                        .order_by(table.c.id)).scalars()]
    if len(ids) != count:
        raise schema.DataError(f"{table.name!r} got {len(ids) - count:+d} rows from another "
                               "writer during this write; nothing was written")
    return ids


def _refuse_without_label_times(conn: Connection, tables: dict[str, pd.DataFrame]) -> None:
    """A database made by an earlier release has no `labelled_at`: rows written now would
    carry label times its older rows lack, so the writer refuses instead of mixing them."""
    inspector = sa.inspect(conn)
    for name in tables:
        if LABELLED_AT not in {c["name"] for c in inspector.get_columns(name)}:
            raise schema.DataError(
                f"table {name!r} was created by an earlier release (no {LABELLED_AT} column); "
                "recreate the database with `python -m backend.ml init-db --force`")


def init_db(engine: Engine, *, days: int = 730, seed: int = 42, force: bool = False,
            end: date | None = None, shipments_per_day: int = SHIPMENTS_PER_DAY,
            delays: LabelDelays | None = None,
            progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Create the tables and fill them with `days` days ending yesterday (or `end`); the
    outcomes not known by the last day's end are held back (`delays`: the settings')."""
    if database_has_data(engine):
        if not force:
            raise DatabaseExistsError(
                f"{loading.describe_url(engine.url.render_as_string())} already holds data; "
                "pass --force to replace it")
        # The generated tables only: a spec's own table (`ingest`) is not ours to drop.
        schema.metadata.drop_all(engine)
        pending.metadata.drop_all(engine)
    last_day = end or (datetime.now().date() - timedelta(days=1))
    start = last_day - timedelta(days=days - 1)
    tables = generate(start, days, seed=seed, shipments_per_day=shipments_per_day,
                      delays=delays or get_settings().label_delays())
    return write_tables(engine, tables, world_now=world_now(tables), progress=progress)


def simulate(engine: Engine, *, days: int, seed: int = 42, scenario: str | None = None,
             shipments_per_day: int = SHIPMENTS_PER_DAY, delays: LabelDelays | None = None,
             progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Append `days` days after the newest shipment: tomorrow's data, maybe drifted. The
    new days' unknown outcomes are held back; earlier held outcomes now due are written.
    Held outcomes keep the due time they were generated with, whatever `delays` says now."""
    if scenario:
        get_scenario(scenario)  # fail before touching anything
    newest = loading.newest_time(engine, "shipments") if sa.inspect(engine).has_table(
        "shipments") else None
    if newest is None:
        raise schema.DataError("the database has no shipments yet; run init-db first")
    start = newest.date() + timedelta(days=1)
    newest_month = loading.newest_time(engine, "supplier_scorecards")
    tables = generate(start, days, seed=seed, scenario=scenario,
                      shipments_per_day=shipments_per_day,
                      delays=delays or get_settings().label_delays())
    now = world_now(tables)
    if newest_month is not None:  # months already on file are not written twice
        cards = tables["supplier_scorecards"]
        tables["supplier_scorecards"] = cards[cards.month > pd.Timestamp(newest_month)]
    return write_tables(engine, tables, world_now=now, progress=progress)
