"""The logistics database's tables: columns, their roles and lineage.

Every column carries a role in `Column.info["role"]`:
  id       identifies a row; never a feature
  time     the event time a row is ordered and windowed by
  context  known when the decision is made; the only columns a model may use as features
  outcome  known only afterwards (delivery, next quarter, hindsight); targets come from here
  labelled when the row's outcomes became known (`labels.LABELLED_AT`; NULL: not yet);
           never a feature. Only the generated tables have it (see `labels`).
`derived_from` names the columns a column is computed from, so the leakage guard can
follow a feature back to a target.

The generated plant's tables are in `metadata` (`GENERATED`): `backend.ml.data.synthetic`
creates, fills and, on `init-db --force`, drops exactly those. A spec may declare its own
table (`specs.TableDecl`); `register_table` turns it into a table of `declared_metadata`
with the same roles, so loading, training, the check and the leakage tests read it like
any other, and only `ingest` writes it. Its key columns are its primary key (no `id`).

The scheduler only reads: SQLite is opened with `mode=ro`, PostgreSQL sessions with
`default_transaction_read_only`. `synthetic` and `ingest` are the writers; `loading` reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from backend.ml.data.labels import LABELLED_AT

if TYPE_CHECKING:
    from backend.ml.fleet.specs import TableDecl

metadata = sa.MetaData()
declared_metadata = sa.MetaData()


class DataError(Exception):
    """A table cannot be read: unreachable database, missing table or column."""


def _col(name: str, type_: Any, role: str, *, derived_from: Iterable[str] = (),
         **kwargs: Any) -> sa.Column[Any]:
    return sa.Column(name, type_, info={"role": role, "derived_from": tuple(derived_from)},
                     **kwargs)


def _id() -> sa.Column[Any]:
    return _col("id", sa.Integer, "id", primary_key=True, autoincrement=True)


def _labelled_at() -> sa.Column[Any]:
    return _col(LABELLED_AT, sa.DateTime, "labelled", nullable=True)


S = sa.String(40)

shipments = sa.Table(
    "shipments", metadata,
    _id(),
    _col("dispatched_at", sa.DateTime, "time", nullable=False),
    _col("origin", S, "context"),
    _col("loading_point", S, "context"),
    _col("shift", S, "context"),
    _col("destination", S, "context", derived_from=["customer"]),
    _col("route", S, "context"),
    _col("distance_km", sa.Float, "context", derived_from=["route"]),
    _col("mode", S, "context", derived_from=["distance_km"]),
    _col("vehicle_type", S, "context", derived_from=["material", "mode", "tonnage"]),
    _col("material", S, "context", derived_from=["customer"]),
    _col("tonnage", sa.Float, "context", derived_from=["mode"]),
    _col("weighbridge_tonnes", sa.Float, "context"),
    _col("priority", S, "context"),
    _col("customer", S, "context"),
    _col("customer_segment", S, "context", derived_from=["customer"]),
    _col("transporter", S, "context"),
    _col("transporter_on_time_rate", sa.Float, "context"),
    _col("weather", S, "context"),
    _col("rainfall_mm", sa.Float, "context"),
    _col("traffic", S, "context"),
    _col("is_festival", sa.Integer, "context"),
    _col("is_monsoon", sa.Integer, "context"),
    _col("fuel_price", sa.Float, "context"),
    _col("planned_transit_hours", sa.Float, "context", derived_from=["distance_km", "mode"]),
    _col("actual_transit_hours", sa.Float, "outcome"),
    _col("delay_hours", sa.Float, "outcome", derived_from=["actual_transit_hours"]),
    _col("fuel_litres", sa.Float, "outcome"),
    _col("total_cost", sa.Float, "outcome", derived_from=["fuel_litres"]),
    _col("demurrage_cost", sa.Float, "outcome", derived_from=["delay_hours"]),
    _col("delivery_condition", S, "outcome"),
    _col("customer_rating", sa.Integer, "outcome",
         derived_from=["delay_hours", "delivery_condition"]),
    _col("incident", sa.Integer, "outcome"),
    _col("risk_level", S, "outcome", derived_from=["delay_hours", "delivery_condition",
                                                   "incident"]),
    _col("best_route", S, "outcome"),
    _col("cheapest_option", S, "outcome"),
    _col("fastest_slot", S, "outcome"),
    _labelled_at(),
    sa.Index("ix_shipments_dispatched_at", "dispatched_at"),
)

daily_demand = sa.Table(
    "daily_demand", metadata,
    _id(),
    _col("demand_date", sa.DateTime, "time", nullable=False),
    _col("material", S, "context"),
    _col("region", S, "context"),
    _col("is_festival", sa.Integer, "context"),
    _col("is_monsoon", sa.Integer, "context"),
    _col("price_index", sa.Float, "context"),
    _col("tonnes_ordered", sa.Float, "outcome"),
    _labelled_at(),
    sa.Index("ix_daily_demand_demand_date", "demand_date"),
)

equipment_telemetry = sa.Table(
    "equipment_telemetry", metadata,
    _id(),
    _col("recorded_at", sa.DateTime, "time", nullable=False),
    _col("equipment_id", S, "id"),
    _col("equipment_type", S, "context"),
    _col("age_years", sa.Float, "context"),
    _col("hours_since_service", sa.Float, "context"),
    _col("vibration_mm_s", sa.Float, "context"),
    _col("temperature_c", sa.Float, "context"),
    _col("oil_quality", sa.Float, "context"),
    _col("load_pct", sa.Float, "context"),
    _col("failure_within_30d", sa.Integer, "outcome"),
    _labelled_at(),
    sa.Index("ix_equipment_telemetry_recorded_at", "recorded_at"),
)

supplier_scorecards = sa.Table(
    "supplier_scorecards", metadata,
    _id(),
    _col("month", sa.DateTime, "time", nullable=False),
    _col("transporter", S, "context"),
    _col("fleet_size", sa.Integer, "context"),
    _col("shipments_handled", sa.Integer, "context"),
    _col("on_time_rate", sa.Float, "context"),
    _col("damage_rate", sa.Float, "context"),
    _col("price_deviation", sa.Float, "context"),
    _col("disputes", sa.Integer, "context"),
    _col("next_quarter_rating", S, "outcome"),
    _labelled_at(),
    sa.Index("ix_supplier_scorecards_month", "month"),
)

dispatch_decisions = sa.Table(
    "dispatch_decisions", metadata,
    _id(),
    _col("decided_at", sa.DateTime, "time", nullable=False),
    _col("yard", S, "context"),
    _col("shift", S, "context"),
    _col("rakes_available", sa.Integer, "context"),
    _col("trucks_available", sa.Integer, "context"),
    _col("demand_surge", sa.Float, "context"),
    _col("yard_closure", sa.Integer, "context"),
    _col("weather_alert", sa.Integer, "context"),
    _col("stock_level_pct", sa.Float, "context"),
    _col("pending_orders", sa.Integer, "context"),
    _col("action_taken", S, "context"),
    _col("throughput_tonnes", sa.Float, "outcome"),
    _col("dispatch_cost", sa.Float, "outcome"),
    _col("best_action", S, "outcome"),
    _labelled_at(),
    sa.Index("ix_dispatch_decisions_decided_at", "decided_at"),
)

TABLES: dict[str, sa.Table] = {t.name: t for t in metadata.sorted_tables}
GENERATED: tuple[str, ...] = tuple(TABLES)

COLUMN_TYPES: dict[str, Any] = {"float": sa.Float, "integer": sa.Integer, "text": sa.Text,
                                "datetime": sa.DateTime}


def register_table(decl: TableDecl) -> sa.Table:
    """The table a spec declares, registered beside the generated ones (once per name)."""
    if decl.name in TABLES:
        known = TABLES[decl.name]
        if decl.name in GENERATED or known.info.get("decl") != decl:
            raise DataError(f"table {decl.name!r} is declared twice")
        return known
    columns = [_col(decl.time, sa.DateTime, "time", nullable=False)]
    columns += [_col(c.name, COLUMN_TYPES[c.type], c.role, derived_from=c.derived_from,
                     nullable=c.name not in decl.key_columns) for c in decl.columns]
    table = sa.Table(decl.name, declared_metadata, *columns,
                     sa.PrimaryKeyConstraint(*decl.key_columns), info={"decl": decl})
    TABLES[decl.name] = table
    return table


def _register_declared() -> None:
    """The tables of the specs in the registry (examples included when enabled)."""
    from backend.ml.fleet import specs

    for spec in specs.SPECS.values():
        if spec.table_decl is not None:
            register_table(spec.table_decl)


def key_columns(table: str) -> tuple[str, ...]:
    """The columns that identify a row: the primary key (`id` for the generated tables)."""
    return tuple(c.name for c in get_table(table).primary_key.columns)


def time_column(table: str) -> str:
    """The name of a table's event-time column."""
    return next(c.name for c in get_table(table).columns if c.info["role"] == "time")


def get_table(name: str) -> sa.Table:
    try:
        return TABLES[name]
    except KeyError:
        raise DataError(f"unknown table {name!r}; tables are {', '.join(sorted(TABLES))}") \
            from None


def text_columns(table: str) -> set[str]:
    """The columns of a table that hold strings (categories to a model)."""
    return {c.name for c in get_table(table).columns if isinstance(c.type, sa.String)}


def outcome_columns(table: str) -> list[str]:
    """The columns of a table known only afterwards, in table order."""
    return [c.name for c in get_table(table).columns if c.info["role"] == "outcome"]


def column_role(table: str, column: str) -> str | None:
    col = get_table(table).columns.get(column)
    return None if col is None else str(col.info["role"])


def lineage(table: str, column: str) -> set[str]:
    """Every column `column` is computed from, transitively."""
    seen: set[str] = set()
    stack = [column]
    cols = get_table(table).columns
    while stack:
        col = cols.get(stack.pop())
        if col is None:
            continue
        for parent in col.info["derived_from"]:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


_register_declared()
