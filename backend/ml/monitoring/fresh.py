"""Which rows are fresh for a version, whether there are enough for a verdict, and where a
retrain's holdout begins among them: what the check (`check.py`) reads before it scores.

Fresh rows are a table's labelled, prepared rows the version never learnt from: newer than
its training window (the end of its holdout), or labelled after its training read the
labels (`learnt_labels_until`). A verdict needs `fresh_minimum(spec)` of them, and a metric that
ranks events MIN_EVENTS of each class besides.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from backend.ml.data import loading, schema
from backend.ml.data.labels import LABELLED_AT, LabelState, as_naive_utc
from backend.ml.fleet import specs
from backend.ml.fleet.scoring import get_metric
from backend.ml.training import trainer

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

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


def retrain_holdout_start(spec: specs.ModelSpec, fresh_times: pd.Series,
                          shifted_rows: int | None = None) -> str:
    """Where a retrain's holdout begins among the fresh rows' times (in time order): the
    newest half, at most RETRAIN_HOLDOUT_MINIMUMS fresh minimums of rows; after a shift
    (`shifted_rows`, the newest rows since the world shifted: `shift.rows_since_shift`)
    the newest half of those, at least a fresh minimum, so the fit learns from the other
    half. Held out whole, the few days of a shift that labels have confirmed left the fit
    nothing of it (a diesel shock at day 180: 8 of its 508 labelled rows in training, and a
    retrain that stayed under the threshold)."""
    held = min(len(fresh_times) // 2, RETRAIN_HOLDOUT_MINIMUMS * fresh_minimum(spec))
    if shifted_rows is not None:
        held = min(held, max(fresh_minimum(spec), shifted_rows // 2))
    return str(fresh_times.iloc[len(fresh_times) - max(held, 1)].isoformat())


def learnt_labels_until(meta: Mapping[str, Any]) -> str | None:
    """The newest label a version's training read (its `training_data.labels_as_of`): a
    row labelled after it was never learnt, wherever its time lies. None for versions that
    did not record it."""
    recorded = meta.get("training_data")
    value = recorded.get("labels_as_of") if isinstance(recorded, Mapping) else None
    return None if value is None else str(value)


def fresh_tables(database_url: str, data_ends: Mapping[str, str], *,
                 labels_as_of: datetime | None = None,
                 learnt_until: Mapping[str, str | None] | None = None
                 ) -> dict[str, pd.DataFrame]:
    """The tables of these models (name: end of its version's training window), each from
    the oldest window end among its models onward (and back to the oldest row labelled
    after a model's `learnt_until`, or not labelled yet), with the columns they read and
    only the labels known at `labels_as_of` (the check's time; None: every label on file)."""
    starts: dict[str, datetime] = {}
    lookback: dict[str, int] = {}
    cutoffs: dict[str, str] = {}
    columns = trainer.columns_by_table(specs.get_spec(name) for name in data_ends)
    for name, data_end in data_ends.items():
        spec = specs.get_spec(name)
        end = pd.Timestamp(data_end).to_pydatetime()
        starts[spec.table] = min(starts.get(spec.table, end), end)
        lookback[spec.table] = max(lookback.get(spec.table, 0), spec.lookback_days)
        if (cutoff := (learnt_until or {}).get(name)) is not None:
            cutoffs[spec.table] = min(cutoffs.get(spec.table, cutoff), cutoff)
    engine = loading.open_readonly(database_url)
    for table, cutoff in cutoffs.items():
        if (oldest := _oldest_unlearnt(engine, table, cutoff)) is not None:
            starts[table] = min(starts[table], oldest)
    # Lag features need the rows before the window: as far back as the longest lag a spec
    # of the table declares, and a day more.
    return {t: loading.load_table(engine, t, window=loading.Window(
        start=start - pd.Timedelta(days=lookback[t] + 1)), columns=columns[t],
        labels_as_of=labels_as_of) for t, start in starts.items()}


def _oldest_unlearnt(engine: Engine, table: str, cutoff: str) -> datetime | None:
    """The time of the oldest row of `table` labelled after `cutoff` or not labelled yet;
    None when the table keeps no label times (or every row was labelled by then)."""
    if not loading.has_label_times(engine, table):
        return None
    source = schema.get_table(table)
    labelled = source.c[LABELLED_AT]
    query = sa.select(sa.func.min(source.c[schema.time_column(table)])).where(sa.or_(
        labelled.is_(None), labelled > as_naive_utc(cutoff).to_pydatetime()))
    with engine.connect() as conn:
        value = conn.execute(query).scalar()
    return None if value is None else pd.Timestamp(value).to_pydatetime()


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


def fresh_rows(spec: specs.ModelSpec, table: pd.DataFrame, data_end: str,
               learnt_until: str | None = None) -> pd.DataFrame:
    """A table's labelled, prepared rows a version never learnt from, in time order: what a
    check scores it on. Those newer than its training window, and with `learnt_until`
    (`learnt_labels_until`) those whose label came after its training read the labels: a
    version trained every night is newer than every label, so the rows its own window held
    unlabelled, labelled since, are the only ones it can be scored on."""
    labelled, _ = trainer.labelled_frame(spec, table, keep=(LABELLED_AT,))
    unseen = labelled[schema.time_column(spec.table)] > pd.Timestamp(data_end)
    if learnt_until is not None and LABELLED_AT in labelled.columns:
        unseen |= labelled[LABELLED_AT] > as_naive_utc(learnt_until)
    return labelled[unseen].drop(columns=[LABELLED_AT], errors="ignore")


def pending_rows(spec: specs.ModelSpec, table: pd.DataFrame, data_end: str,
                 learnt_until: str | None = None) -> pd.DataFrame:
    """A table's prepared rows newer than a version's training window whose label is not
    known yet (with `learnt_until`, as in `fresh_rows`, at any time: a label not known now
    was not known to its training either): what a check estimates the version's score on
    when too few fresh rows are labelled. With label times (`labelled_at`, NULL when loaded
    as of a time before the label came), a missing label (known to be absent) is not
    pending; a table without them (a spec's own ingested table, a database of an earlier
    release) cannot tell the two apart, so there every row with no target counts as
    pending."""
    columns = trainer.input_columns(spec)
    if LABELLED_AT in table.columns and LABELLED_AT not in columns:
        columns = [*columns, LABELLED_AT]
    frame = spec.frame(table[columns])
    if LABELLED_AT in frame.columns:  # the data layer's one rule for pending
        waiting = loading.label_state(frame, spec.target) == LabelState.PENDING
    else:
        waiting = frame[spec.target].isna()
    tcol = schema.time_column(spec.table)
    if learnt_until is None or LABELLED_AT not in frame.columns:
        waiting &= frame[tcol] > pd.Timestamp(data_end)
    return frame[waiting].sort_values(tcol, kind="stable")


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
