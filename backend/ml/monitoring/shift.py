"""Shifts of a model's world, as its live errors show them: where one began in a check's
window (`rows_since_shift`), and the holdout every later fit of the model takes while the
shift is young (`shift_holdout_start`, `shift_holdouts`).

A check that finds a model degraded looks for a step in its live errors; the retrain then
holds out only the newest half of the rows since the step (`fresh.retrain_holdout_start`),
and the step's time is kept as `shift_since` in the monitor state, for every later fit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from backend.ml.data import schema
from backend.ml.data.labels import as_naive_utc
from backend.ml.fleet import specs
from backend.ml.fleet.scoring import get_metric
from backend.ml.monitoring.fresh import fresh_minimum
from backend.ml.monitoring.state import read_state
from backend.ml.training import trainer

if TYPE_CHECKING:
    from backend.ml.statefile import Recovery

logger = logging.getLogger(__name__)
# How sure a step in the live errors must be (`rows_since_shift`, a p-value) before a
# retrain's holdout is taken from the rows after it. At the diesel shock's first degraded
# check it was 2e-37; of 1,000 calm windows of heavy-tailed errors, 2% went under 1e-2, 0.1%
# under 1e-3, none under 1e-4.
SHIFT_P = 1e-4


def shift_holdout_start(spec: specs.ModelSpec, times: pd.Series,
                        shift_since: datetime) -> str | None:
    """Where a fit's holdout begins among its labelled rows' times (in time order) when the
    model's world shifted at `shift_since`: the newest half of the rows since, at least a
    fresh minimum; None once the default holdout (the newest HOLDOUT_FRACTION) is smaller,
    as it is when the shift is old. The daily run's default holdout of two years is about
    five months: a shift younger than that lay wholly in it, so for months every nightly
    candidate was fitted without a row of the new world and held by the gate."""
    since = int((times >= as_naive_utc(shift_since)).sum())
    held = max(fresh_minimum(spec), since // 2)
    if held >= int(len(times) * trainer.HOLDOUT_FRACTION) or held >= len(times):
        return None
    return str(times.iloc[len(times) - held].isoformat())


def shift_signals(spec: specs.ModelSpec, y: np.ndarray,
                  values: np.ndarray) -> list[tuple[np.ndarray, bool]]:
    """Per-row series of a check's window whose step marks a shift of the world, each with
    whether a step either way counts: a regressor's residuals (a bias: costs that rose past
    the predictions) and its absolute errors (a wider spread, one way); a classifier's
    misses. No series for a metric that ranks rows (ROC AUC): it has no per-row loss."""
    if get_metric(spec.metric).needs_scores:
        return []
    if spec.task == "regression":
        residual = np.asarray(y, dtype=float) - np.asarray(values, dtype=float)
        return [(residual, True), (np.abs(residual), False)]
    return [((np.asarray(y) != np.asarray(values)).astype(float), False)]


def pettitt(series: np.ndarray, *, least: int, two_sided: bool) -> tuple[int, float]:
    """Pettitt's change-point test on the ranks of a series in time order: the number of
    newest rows after the likeliest step (each side at least `least` rows) and the step's
    p-value (approximate; one-sided: only the newer rows ranking higher counts). Ranks, not
    values: a squared error's tail is too heavy for a test of means (a shock that made the
    errors eight times larger gave a t of 4.5, at the wrong row)."""
    n = len(series)
    ranks = rankdata(series)  # ties (a classifier's hits and misses) share their mean rank
    k = np.arange(least, n - least + 1)  # rows before the split
    statistic = k * (n + 1) - 2 * np.cumsum(ranks)[k - 1]  # -U: the newer rows rank higher
    if two_sided:
        statistic = np.abs(statistic)
    best = int(np.argmax(statistic))
    if statistic[best] <= 0:
        return int(n - k[best]), 1.0
    p_value = np.exp(-6 * float(statistic[best]) ** 2 / (n ** 3 + n ** 2))
    return int(n - k[best]), float(min(1.0, (2 if two_sided else 1) * p_value))


def rows_since_shift(spec: specs.ModelSpec, y: np.ndarray, values: np.ndarray) -> int | None:
    """How many of a check window's newest rows came after the world shifted, or None when
    no step is sure (p-value under SHIFT_P) on any of the model's `shift_signals`. Each side
    of a step is at least half a fresh minimum of rows."""
    least = max(2, fresh_minimum(spec) // 2)
    if len(y) < 2 * least:
        return None
    found = [pettitt(series, least=least, two_sided=two_sided)
             for series, two_sided in shift_signals(spec, y, values)]
    rows, p_value = min(found, key=lambda f: f[1], default=(0, 1.0))
    return rows if p_value < SHIFT_P else None


def shift_holdouts(logs_dir: Path, chosen: Sequence[specs.ModelSpec],
                   tables: Mapping[str, pd.DataFrame],
                   given: Mapping[str, trainer.TrainOptions], *,
                   on_recover: Callable[[Recovery], None] | None = None
                   ) -> dict[str, trainer.TrainOptions]:
    """A run's options for the models whose world a check found shifted (`shift_since` in
    the monitor state) and for which the caller chose none: the holdout that keeps half of
    the rows since the shift in the fit (`shift_holdout_start`)."""
    state = read_state(logs_dir, on_recover=on_recover)
    options = {}
    for spec in chosen:
        since = state.of(spec.name).shift_since
        if since is None or spec.name in given:
            continue
        labelled, _ = trainer.labelled_frame(spec, tables[spec.table])
        start = shift_holdout_start(spec, labelled[schema.time_column(spec.table)], since)
        if start is not None:
            logger.info("%s: its world shifted at %s; the fit holds out the rows from %s",
                        spec.name, since.isoformat(), start)
            options[spec.name] = trainer.TrainOptions(holdout_since=start)
    return options
