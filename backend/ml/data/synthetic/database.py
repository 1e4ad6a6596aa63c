"""All five tables for a span of days, and the database they are written to.

`generate` is deterministic for its arguments; `init_db` fills an empty database and
`simulate` appends days after the newest row, optionally under a drift scenario.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from backend.ml.data import loading, schema
from backend.ml.data.synthetic.demand import make_daily_demand
from backend.ml.data.synthetic.dispatch import make_dispatch
from backend.ml.data.synthetic.scenarios import get_scenario
from backend.ml.data.synthetic.scorecards import make_scorecards
from backend.ml.data.synthetic.shipments import make_shipments
from backend.ml.data.synthetic.telemetry import make_telemetry
from backend.ml.data.synthetic.world import SHIPMENTS_PER_DAY, day_context, make_world


def generate(start: date, days: int, *, seed: int = 42, scenario: str | None = None,
             shipments_per_day: int = SHIPMENTS_PER_DAY,
             labelled_until: date | None = None) -> dict[str, pd.DataFrame]:
    """All five tables for `days` days from `start`, deterministic for the arguments.

    `labelled_until` is the last month whose next-quarter supplier rating is known
    (by default three months before the last day).
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    drift = get_scenario(scenario) if scenario else None
    world = make_world(seed)
    rng = np.random.default_rng([seed, start.toordinal(), days])
    day_index = pd.date_range(pd.Timestamp(start), periods=days, freq="D")
    ctx = day_context(day_index, rng, drift,
                      np.random.default_rng([seed, start.toordinal(), days, 1]))
    last = pd.Timestamp(labelled_until) if labelled_until else day_index[-1] - pd.DateOffset(
        months=3)
    # Every table draws from the one stream in this order: reordering the calls would
    # change the rows a seed gives.
    return {
        "shipments": make_shipments(ctx, world, rng, shipments_per_day),
        "daily_demand": make_daily_demand(ctx, rng, seed),
        "equipment_telemetry": make_telemetry(ctx, world, rng),
        "supplier_scorecards": make_scorecards(ctx, world, rng, last),
        "dispatch_decisions": make_dispatch(ctx, rng),
    }


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
                 progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Append frames to their tables in one transaction: all rows land, or none."""
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        schema.metadata.create_all(conn)
        for name, frame in tables.items():
            frame = frame.astype(object).where(frame.notna(), None)
            records = frame.to_dict("records")
            for i in range(0, len(records), 50_000):
                conn.execute(schema.TABLES[name].insert(), records[i:i + 50_000])
            counts[name] = len(records)
            if progress:
                progress(name, len(records))
    return counts


def init_db(engine: Engine, *, days: int = 730, seed: int = 42, force: bool = False,
            end: date | None = None, shipments_per_day: int = SHIPMENTS_PER_DAY,
            progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Create the tables and fill them with `days` days ending yesterday (or `end`)."""
    if database_has_data(engine):
        if not force:
            raise DatabaseExistsError(
                f"{loading.describe_url(engine.url.render_as_string())} already holds data; "
                "pass --force to replace it")
        # The generated tables only: a spec's own table (`ingest`) is not ours to drop.
        schema.metadata.drop_all(engine)
    last_day = end or (datetime.now().date() - timedelta(days=1))
    start = last_day - timedelta(days=days - 1)
    tables = generate(start, days, seed=seed, shipments_per_day=shipments_per_day)
    return write_tables(engine, tables, progress=progress)


def simulate(engine: Engine, *, days: int, seed: int = 42, scenario: str | None = None,
             shipments_per_day: int = SHIPMENTS_PER_DAY,
             progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Append `days` days after the newest shipment: tomorrow's data, maybe drifted."""
    if scenario:
        get_scenario(scenario)  # fail before touching anything
    newest = loading.newest_time(engine, "shipments") if sa.inspect(engine).has_table(
        "shipments") else None
    if newest is None:
        raise schema.DataError("the database has no shipments yet; run init-db first")
    start = newest.date() + timedelta(days=1)
    newest_month = loading.newest_time(engine, "supplier_scorecards")
    tables = generate(start, days, seed=seed, scenario=scenario,
                      shipments_per_day=shipments_per_day)
    if newest_month is not None:  # months already on file are not written twice
        cards = tables["supplier_scorecards"]
        tables["supplier_scorecards"] = cards[cards.month > pd.Timestamp(newest_month)]
    return write_tables(engine, tables, progress=progress)
