"""Which rows are fresh for a version, whether there are enough for a verdict, and where a
retrain's holdout begins among them: what the check (`check.py`) reads before it scores.

Fresh rows are a table's labelled, prepared rows newer than the version's training window
(the end of its holdout). A verdict needs `fresh_minimum(spec)` of them, and a metric that
ranks events MIN_EVENTS of each class besides.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa

from backend.ml.data import loading, schema
from backend.ml.data.labels import LABELLED_AT, LabelState
from backend.ml.fleet import specs
from backend.ml.fleet.scoring import get_metric
from backend.ml.training import trainer

# A ROC AUC ranks the labelled events (incidents) against the rest: on the first fresh
# day's handful of incidents it is noise (0.58 on a calm day, holdout 0.75), and a
# "degraded" verdict on noise means three futile retrains and a critical alert. So such a
# metric needs this many rows of each class, besides `fresh_minimum` rows.
MIN_EVENTS = 10
# A retrain's holdout is at most this many fresh minimums of rows (the newest): enough for
# the gate's interval and slices, while the fit learns from every older fresh row.
RETRAIN_HOLDOUT_MINIMUMS = 5
# The live score is taken on at most this many fresh minimums of rows, the newest (about a
# week of shipments): scored on every row since training, twenty shocked days after 180
# calm ones moved a year-old version's score by 0.04 and no check saw the shock.
LIVE_WINDOW_MINIMUMS = 10


def fresh_minimum(spec: specs.ModelSpec) -> int:
    return max(30, spec.min_samples // 5)


def retrain_holdout_start(spec: specs.ModelSpec, fresh_times: pd.Series) -> str:
    """Where a retrain's holdout begins among the fresh rows' times (in time order): the
    newest half, at most RETRAIN_HOLDOUT_MINIMUMS fresh minimums of rows."""
    held = min(len(fresh_times) // 2, RETRAIN_HOLDOUT_MINIMUMS * fresh_minimum(spec))
    return str(fresh_times.iloc[len(fresh_times) - max(held, 1)].isoformat())


def fresh_tables(database_url: str, data_ends: Mapping[str, str], *,
                 labels_as_of: datetime | None = None) -> dict[str, pd.DataFrame]:
    """The tables of these models (name: end of its version's training window), each from
    the oldest window end among its models onward, with only the labels known at
    `labels_as_of` (the check's time; None: every label on file)."""
    starts: dict[str, datetime] = {}
    lookback: dict[str, int] = {}
    for name, data_end in data_ends.items():
        spec = specs.get_spec(name)
        end = pd.Timestamp(data_end).to_pydatetime()
        starts[spec.table] = min(starts.get(spec.table, end), end)
        lookback[spec.table] = max(lookback.get(spec.table, 0), spec.lookback_days)
    # Lag features need the rows before the window: as far back as the longest lag a spec
    # of the table declares, and a day more.
    engine = loading.open_readonly(database_url)
    return {t: loading.load_table(engine, t, window=loading.Window(
        start=start - pd.Timedelta(days=lookback[t] + 1)), labels_as_of=labels_as_of)
        for t, start in starts.items()}


def seen_ranges(database_url: str, table: str, before: str) -> dict[str, tuple[float, float]]:
    """The range (low, high) of each numeric column of `table` over its rows before
    `before`: where a version's training rows went. One aggregate query, no rows loaded."""
    source = schema.get_table(table)
    columns = [c.name for c in source.columns if c.name != "id"
               and isinstance(c.type, sa.Integer | sa.Float | sa.Numeric)]
    query = sa.select(*(f(source.c[c]) for c in columns for f in (sa.func.min, sa.func.max)))
    query = query.where(source.c[schema.time_column(table)] < pd.Timestamp(before).to_pydatetime())
    with loading.open_readonly(database_url).connect() as conn:
        row = conn.execute(query).one()
    return {c: (float(row[2 * i]), float(row[2 * i + 1])) for i, c in enumerate(columns)
            if row[2 * i] is not None}


def fresh_rows(spec: specs.ModelSpec, table: pd.DataFrame, data_end: str) -> pd.DataFrame:
    """A table's labelled, prepared rows newer than a version's training window: what a
    check scores the version on."""
    labelled, _ = trainer.labelled_frame(spec, table)
    return labelled[labelled[schema.time_column(spec.table)] > pd.Timestamp(data_end)]


def pending_rows(spec: specs.ModelSpec, table: pd.DataFrame, data_end: str) -> pd.DataFrame:
    """A table's prepared rows newer than a version's training window whose label is not
    known yet: what a check estimates the version's score on when too few fresh rows are
    labelled. With label times (`labelled_at`, NULL when loaded as of a time before the
    label came), a missing label (known to be absent) is not pending; a table without them
    (a spec's own ingested table, a database of an earlier release) cannot tell the two
    apart, so there every row with no target counts as pending."""
    columns = trainer.input_columns(spec)
    if LABELLED_AT in table.columns and LABELLED_AT not in columns:
        columns = [*columns, LABELLED_AT]
    frame = spec.frame(table[columns])
    if LABELLED_AT in frame.columns:  # the data layer's one rule for pending
        waiting = loading.label_state(frame, spec.target) == LabelState.PENDING
    else:
        waiting = frame[spec.target].isna()
    tcol = schema.time_column(spec.table)
    pending = frame[waiting & (frame[tcol] > pd.Timestamp(data_end))]
    return pending.sort_values(tcol, kind="stable")


def live_window(spec: specs.ModelSpec, fresh: pd.DataFrame) -> pd.DataFrame:
    """The fresh rows (in time order) a check scores: the newest LIVE_WINDOW_MINIMUMS fresh
    minimums of them, reaching further back until a metric that ranks events has MIN_EVENTS
    of its rarer class. Drift, the A/B test and the live interval read the same rows."""
    size = LIVE_WINDOW_MINIMUMS * fresh_minimum(spec)
    if len(fresh) <= size:
        return fresh
    if get_metric(spec.metric).needs_scores:
        newest_first = trainer.target_values(spec, fresh[spec.target])[::-1]
        rarer = np.minimum(np.cumsum(newest_first == newest_first.max()),
                           np.cumsum(newest_first != newest_first.max()))
        enough = np.flatnonzero(rarer >= MIN_EVENTS)
        size = max(size, int(enough[0]) + 1 if len(enough) else len(fresh))
    return fresh.iloc[len(fresh) - size:]


def events_short(spec: specs.ModelSpec, fresh: pd.DataFrame) -> int:
    """How many more rows of its rarer class a metric that ranks events needs (else 0)."""
    if not get_metric(spec.metric).needs_scores:
        return 0
    counts = pd.Series(trainer.target_values(spec, fresh[spec.target])).value_counts()
    rarer = int(counts.min()) if len(counts) == 2 else 0
    return max(0, MIN_EVENTS - rarer)
