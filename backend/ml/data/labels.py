"""When the plant learns each generated table's outcomes: the label delays, in one place.

An outcome is known only after it happens:
  shipments            delivered (dispatched_at + actual_transit_hours) and settled
                       `settlement_days` later (billing, claims, the customer's rating)
  daily_demand         the day's end (`demand_days` after the day's start)
  equipment_telemetry  `telemetry_days` after the reading (failure_within_30d)
  supplier_scorecards  `scorecard_months` after the month's start (next_quarter_rating)
  dispatch_decisions   `dispatch_days` after the decision (throughput, cost, hindsight)

Each generated table carries `labelled_at`, the time its outcomes became known; NULL means
not yet known (pending). A row whose `labelled_at` is set but whose outcome is NULL is
missing: the plant learnt it will not have that label. `LabelState` names the three.

The delays decide when the synthetic world writes an outcome (`synthetic.database`); they
are Settings (`LABEL_*`). They do not move labels already on file: a row keeps the due
time it was generated with. Tables without `labelled_at` (a spec's own table, a database
of an earlier release) have no delay: a non-null outcome there counts as known.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where it is used: the schema reads this module
    import pandas as pd

LABELLED_AT = "labelled_at"


class LabelState(StrEnum):
    KNOWN = "known"
    PENDING = "pending"  # not yet known at the time asked about
    MISSING = "missing"  # known to be absent: it will never come


@dataclass(frozen=True)
class LabelDelays:
    """How long after its event time each generated table's outcomes become known."""

    settlement_days: float = 3.0
    demand_days: float = 1.0
    telemetry_days: float = 30.0
    scorecard_months: int = 3
    dispatch_days: float = 1.0

    def labelled_at(self, table: str, frame: pd.DataFrame) -> pd.Series:
        """When each row of a generated `table` has its outcomes (needs the row's time
        column and, for shipments, `actual_transit_hours`)."""
        import pandas as pd

        if table == "shipments":
            transit = pd.to_timedelta(frame["actual_transit_hours"].clip(lower=0), unit="h")
            due = frame["dispatched_at"] + transit + pd.Timedelta(days=self.settlement_days)
            return due.dt.ceil("s")  # the database keeps whole seconds
        if table == "daily_demand":
            return frame["demand_date"] + pd.Timedelta(days=self.demand_days)
        if table == "equipment_telemetry":
            return frame["recorded_at"] + pd.Timedelta(days=self.telemetry_days)
        if table == "supplier_scorecards":
            return frame["month"] + pd.DateOffset(months=self.scorecard_months)
        if table == "dispatch_decisions":
            return frame["decided_at"] + pd.Timedelta(days=self.dispatch_days)
        raise ValueError(f"no label delay for table {table!r}")


DEFAULT_DELAYS = LabelDelays()


def as_naive_utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    """A time as the database's naive timestamps hold it: UTC, without a zone. A naive
    time is taken as already being so."""
    import pandas as pd

    stamp = pd.Timestamp(moment)
    return stamp if stamp.tzinfo is None else stamp.tz_convert(UTC).tz_localize(None)
