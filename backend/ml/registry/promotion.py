"""The promotion gate: whether a new version should replace production, and why, and the
evidence it decides on.

The rule (README, "How it decides"), with both models scored on the candidate's holdout,
the newest rows, production re-scored there:
  - nothing in production: the first successful fit is promoted, flagged when it is below
    its threshold (serving a weak model beats serving none);
  - a candidate at or above its threshold is promoted when the lower bound of the paired
    bootstrap interval of (candidate score - production score) is at least minus the
    tolerance: it is shown no worse than production, not merely lucky on these rows;
  - a candidate below its threshold is promoted, flagged, only when production is below
    the threshold too and the interval's lower bound is above plus the tolerance (serve
    the best there is, when it is shown better);
  - either promotion is held when the candidate is worse than production by more than the
    slice limit on a slice (a value of one of the spec's `slices` columns) of at least the
    minimum rows: better on average must not mean much worse for one destination;
  - anything else is kept as a candidate, a candidate worse than production always.

Without an interval (no bootstrap configured, or production's predictions unavailable) the
point difference stands in for both bounds: the rule before the bootstrap.

The bootstrap is paired: both models' predictions are computed once, and each resample
draws the same row indices for both, so the interval is of the difference itself and the
rows' own difficulty cancels out. No metric is scored resample by resample where numpy can
do all of them at once: r2 and 1 - WAPE from column sums of per-row terms over an index
matrix; accuracy and balanced accuracy from multinomial counts of their few distinct
per-row terms (hit or miss, by class), which is exactly the distribution of drawing rows
but costs resamples x a few values, not x rows; ROC AUC from how many rows each resample
draws of each run of the rows sorted by score (`_auc_runs`). Any other metric is
looped. The same seed draws the same resamples, so the same decision. Slices compare
point scores only, all values of a column at once from the same sums: a slice of a few
hundred rows is noisy, which is why it must clear a limit ten times the tolerance and a
minimum size.

Not done here: predicting on the holdout (the run has the data and passes the arrays in),
and the alert a flagged promotion raises (`runs/promote.py`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from backend.ml.fleet.scoring import get_metric

# Resamples are drawn in blocks of about this many cells (resamples x rows) to bound memory.
BLOCK_CELLS = 1_000_000
# Per-row sums with at most this many distinct values are resampled as multinomial counts of
# each value (`_resampled_differences`).
MULTINOMIAL_MAX_VALUES = 256


@dataclass(frozen=True)
class Interval:
    """Candidate minus production on the same holdout rows, and its bootstrap interval."""

    difference: float  # on all the rows
    low: float
    high: float
    confidence: float  # e.g. 0.9: the 5th and 95th percentiles of the resampled differences
    resamples: int  # resamples that could be scored (ROC AUC needs both classes)

    def describe(self) -> str:
        return (f"difference {self.difference:+.4f}, {self.confidence:.0%} interval "
                f"[{self.low:+.4f}, {self.high:+.4f}]")


@dataclass(frozen=True)
class SliceGap:
    """Candidate minus production on the rows of one value of one slice column."""

    column: str
    value: str
    difference: float
    rows: int

    def describe(self) -> str:
        return f"{self.column}={self.value} by {-self.difference:.4f} ({self.rows} rows)"


@dataclass(frozen=True)
class Decision:
    """What the gate decided for one new version of a run, and on what evidence."""

    version: str
    promoted: bool
    decision: str  # why, for people
    production_score_on_holdout: float | None  # None: nothing in production
    below_threshold: bool = False  # promoted although under its threshold: the best there is
    interval: Interval | None = None  # None: no bootstrap (see the module docstring)
    worst_slice: SliceGap | None = None  # the slice the candidate loses most on, if any

    def as_detail(self) -> dict[str, Any]:
        return asdict(self)


class GateVerdict(NamedTuple):
    promote: bool
    reason: str
    below_threshold: bool  # promoted although the candidate is under its threshold


def promotion_decision(*, candidate_score: float, candidate_passed: bool,
                       production_score_on_same_holdout: float | None, tolerance: float,
                       threshold: float | None = None, interval: Interval | None = None,
                       worst_slice: SliceGap | None = None,
                       slice_limit: float | None = None) -> GateVerdict:
    """Whether a new version should replace production, why, and whether it is promoted
    below its threshold (see the module docstring for the rule).

    `production_score_on_same_holdout` is None only when there is no production version.
    Whether production is below the threshold is judged by that same score: its stored
    holdout score is from older rows. Without `interval` the point difference is both of
    its bounds; `worst_slice` holds a promotion when it is worse than `slice_limit`.
    """
    below = "below" if threshold is None else f"below its threshold {threshold:.4f}"
    if production_score_on_same_holdout is None:
        if candidate_passed:
            return GateVerdict(True, "first version: nothing in production to compare with",
                               False)
        return GateVerdict(True, f"first version, promoted although {candidate_score:.4f} is "
                                 f"{below}: nothing in production to compare with", True)
    if math.isnan(candidate_score):
        return GateVerdict(False, f"kept as candidate: score {candidate_score:.4f} is {below}",
                           False)
    prod = production_score_on_same_holdout
    versus = (f"score {candidate_score:.4f} vs production {prod:.4f} on the same holdout "
              f"(tolerance {tolerance:g})")
    difference = candidate_score - prod if interval is None else interval.difference
    low = difference if interval is None else interval.low
    if interval is not None:
        versus = f"{interval.describe()}, {versus}"
    slice_hold = (worst_slice is not None and slice_limit is not None
                  and worst_slice.difference < -slice_limit)
    held_on_slice = (f"kept as candidate: worse on {worst_slice.describe()}, more than the "
                     f"slice limit {slice_limit:g}; overall {versus}"
                     if worst_slice is not None and slice_hold else "")
    if candidate_passed:
        if low >= -tolerance:
            if slice_hold:
                return GateVerdict(False, held_on_slice, False)
            return GateVerdict(True, f"promoted: {versus}", False)
        if difference < -tolerance:
            return GateVerdict(False, f"kept as candidate: worse than production, {versus}",
                               False)
        return GateVerdict(False, f"kept as candidate: not shown better than production, "
                                  f"{versus}", False)
    if threshold is None or prod >= threshold:
        return GateVerdict(False, f"kept as candidate: score {candidate_score:.4f} is {below}",
                           False)
    if low > tolerance:
        if slice_hold:
            return GateVerdict(False, held_on_slice, False)
        return GateVerdict(True, f"promoted although {candidate_score:.4f} is {below}: "
                                 f"production is below it too and the candidate beats it, "
                                 f"{versus}", True)
    if difference < -tolerance:
        return GateVerdict(False, f"kept as candidate: worse than production, {versus}", False)
    shown = "not better" if interval is None else "not shown better"
    return GateVerdict(False, f"kept as candidate: {below}, like production, and {shown} "
                              f"than it by more than the tolerance, {versus}", False)


# ---- the evidence -------------------------------------------------------------------------

OnRows = Callable[[np.ndarray], np.ndarray]  # row-index matrix -> difference per resample


class _Sums(NamedTuple):
    """A paired difference that depends only on column sums over the rows drawn: `values`
    holds what each row adds (rows x columns); `difference` turns the sums of resamples or
    slices (one row each) and their row counts into candidate minus production."""

    values: np.ndarray
    difference: Callable[[np.ndarray, np.ndarray | int], np.ndarray]


def _sum_form(metric: str, y: np.ndarray, candidate: np.ndarray,
              production: np.ndarray) -> _Sums | None:
    """The sums form of a metric's paired difference; None for ROC AUC and the others."""
    if metric in ("r2", "one_minus_wape"):
        y, candidate, production = (a.astype(float) for a in (y, candidate, production))
    if metric == "r2":
        centred = y - y.mean()  # a resample's own mean is found from these sums
        gain = (y - production) ** 2 - (y - candidate) ** 2

        def r2(sums: np.ndarray, rows: np.ndarray | int) -> np.ndarray:
            total = sums[:, 1] - sums[:, 2] ** 2 / rows
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(total > 0, sums[:, 0] / total, np.nan)
        return _Sums(np.column_stack([gain, centred ** 2, centred]), r2)
    if metric == "one_minus_wape":
        gain = np.abs(y - production) - np.abs(y - candidate)

        def wape(sums: np.ndarray, rows: np.ndarray | int) -> np.ndarray:
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(sums[:, 1] > 0, sums[:, 0] / sums[:, 1], 0.0)
        return _Sums(np.column_stack([gain, np.abs(y)]), wape)
    if metric not in ("accuracy", "balanced_accuracy"):
        return None
    hits = (y == candidate).astype(float) - (y == production).astype(float)
    if metric == "accuracy":
        return _Sums(hits[:, None], lambda sums, rows: np.asarray(sums[:, 0] / rows))
    members = (y[:, None] == np.unique(y)[None, :]).astype(float)  # rows x classes
    classes = members.shape[1]

    def balanced(sums: np.ndarray, rows: np.ndarray | int) -> np.ndarray:
        # As scikit-learn's: the mean recall over the classes the rows hold
        support, gained = sums[:, :classes], sums[:, classes:]
        with np.errstate(divide="ignore", invalid="ignore"):
            recall = np.where(support > 0, gained / support, np.nan)
        return np.asarray(np.nanmean(recall, axis=1))
    return _Sums(np.hstack([members, members * hits[:, None]]), balanced)


def _auc_runs(positive: np.ndarray, scores: np.ndarray,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows in the runs a resample's ROC AUC depends on: sorted by score, positives of
    one score value form a run, the negatives level with them another, and the negatives
    between two such values one run however many values they span (their order among
    themselves does not matter). Returns each row's run, whether each run is positive, and
    whether each run is a positive one right after the negatives it ties with."""
    order = np.lexsort((positive, scores))  # by score; on a tie, negatives first
    value, pos = scores[order], positive[order]
    new_value = np.r_[True, value[1:] != value[:-1]]
    level = np.cumsum(new_value) - 1
    with_pos = (np.bincount(level, weights=pos) > 0)[level]
    starts = np.r_[True, (pos[1:] != pos[:-1])
                   | (new_value[1:] & (with_pos[1:] | with_pos[:-1]))]
    run_of_row = np.empty(len(order), dtype=np.intp)
    run_of_row[order] = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    run_pos, run_level = pos[first], level[first]
    tied = np.r_[False, run_pos[1:] & ~run_pos[:-1] & (run_level[1:] == run_level[:-1])]
    return run_of_row, run_pos, tied


def _auc_on_rows(y: np.ndarray, candidate: np.ndarray, production: np.ndarray) -> OnRows | None:
    """ROC AUC of both models on each resample, from how many rows it draws of each run
    (`_auc_runs`): a positive wins over the negatives below it and half of those level
    with it. As scikit-learn's, the larger of two labels is the positive class."""
    labels = np.unique(y)
    if len(labels) != 2:
        return None
    positive = y == labels[1]
    models = [_auc_runs(positive, np.asarray(v, dtype=float)) for v in (candidate, production)]

    def auc(idx: np.ndarray, run_of_row: np.ndarray, run_pos: np.ndarray,
            tied: np.ndarray) -> np.ndarray:
        runs = len(run_pos)
        flat = (run_of_row[idx] + np.arange(len(idx))[:, None] * runs).ravel()
        counts = np.bincount(flat, minlength=len(idx) * runs).reshape(len(idx), runs)
        pos = np.where(run_pos, counts, 0)
        neg = counts - pos
        below_or_level = np.cumsum(neg, axis=1)
        ties = np.flatnonzero(tied)
        wins = ((pos * below_or_level).sum(1)
                - 0.5 * (pos[:, ties] * neg[:, ties - 1]).sum(1))
        pairs = pos.sum(1) * neg.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(pairs > 0, wins / pairs, np.nan)

    return lambda idx: np.asarray(auc(idx, *models[0]) - auc(idx, *models[1]))


def _on_rows(metric: str, y: np.ndarray, candidate: np.ndarray, production: np.ndarray,
             form: _Sums | None = None) -> OnRows:
    """Candidate minus production on each resample of an index matrix (one resample a
    row): by sums (`form`, or the metric's), by runs (ROC AUC), or scoring each resample
    (any other metric)."""
    form = form or _sum_form(metric, y, candidate, production)
    if form is not None:  # column by column: gathering whole rows of sums is 3x slower
        columns = [np.ascontiguousarray(c) for c in form.values.T]
        return lambda idx: form.difference(
            np.column_stack([np.take(c, idx).sum(axis=1) for c in columns]), idx.shape[1])
    auc = _auc_on_rows(y, candidate, production) if metric == "roc_auc" else None
    if auc is not None:
        return auc
    score = get_metric(metric).score

    def looped(idx: np.ndarray) -> np.ndarray:
        out = np.full(len(idx), np.nan)
        for i, rows in enumerate(idx):
            try:
                out[i] = score(y[rows], candidate[rows]) - score(y[rows], production[rows])
            except ValueError:  # e.g. ROC AUC of a resample holding one class
                pass
        return out
    return looped


def _row_draws(rng: np.random.Generator, rows: int, resamples: int) -> Iterator[np.ndarray]:
    """Index matrices of `resamples` draws of `rows` rows with replacement, in blocks.
    Native-width integers: numpy converts narrower indices at every gather (3x slower)."""
    block = max(1, BLOCK_CELLS // rows)
    for start in range(0, resamples, block):
        yield rng.integers(0, rows, size=(min(block, resamples - start), rows), dtype=np.intp)


def _resampled_differences(metric: str, y: np.ndarray, candidate: np.ndarray,
                           production: np.ndarray, *, resamples: int,
                           rng: np.random.Generator, form: _Sums | None = None) -> np.ndarray:
    """Candidate minus production on `resamples` paired resamples of the rows. When the
    sums a metric needs take few distinct values per row (hits and misses, by class), the
    number of rows drawn of each is drawn at once from the multinomial: the very
    distribution of drawing rows, at a cost of resamples x distinct values, not x rows."""
    n = len(y)
    form = form or _sum_form(metric, y, candidate, production)
    if form is not None and len(np.unique(form.values[:, 0])) <= MULTINOMIAL_MAX_VALUES:
        distinct, inverse = np.unique(form.values, axis=0, return_inverse=True)
        if len(distinct) <= MULTINOMIAL_MAX_VALUES:
            share = np.bincount(inverse.ravel(), minlength=len(distinct)) / n
            counts = rng.multinomial(n, share, size=resamples)
            return form.difference(counts @ distinct, n)
    on_rows = _on_rows(metric, y, candidate, production, form)
    return np.concatenate([on_rows(idx) for idx in _row_draws(rng, n, resamples)])


def paired_bootstrap(metric: str, y_true: Any, candidate: Any, production: Any, *,
                     resamples: int, seed: int, confidence: float) -> Interval | None:
    """The interval of candidate minus production over `resamples` paired resamples of the
    rows; None when no resample can be scored. The same seed draws the same resamples."""
    y, cand, prod = np.asarray(y_true), np.asarray(candidate), np.asarray(production)
    if y.dtype.kind in "fc":
        cand, prod = cand.astype(float), prod.astype(float)
    form = _sum_form(metric, y, cand, prod)
    difference = math.nan
    if form is not None and len(y):  # the sums of all the rows: no second pass to score
        difference = float(form.difference(form.values.sum(axis=0)[None, :], len(y))[0])
    if not math.isfinite(difference):  # and scikit-learn's conventions where undefined
        score = get_metric(metric).score
        difference = float(score(y, cand) - score(y, prod))
    diffs = (_resampled_differences(metric, y, cand, prod, resamples=resamples,
                                    rng=np.random.default_rng(seed), form=form)
             if resamples and len(y) else np.array([]))
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return None
    low, high = np.quantile(diffs, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(round(difference, 6), round(float(low), 6), round(float(high), 6),
                    confidence, len(diffs))


def worst_slice(metric: str, y_true: Any, candidate: Any, production: Any,
                columns: Mapping[str, Any], *, min_rows: int) -> SliceGap | None:
    """The slice (one value of one column, at least `min_rows` rows) where the candidate
    scores lowest against production; None when no slice is large enough to score.

    R^2 on a slice is taken against the whole holdout's variance, not the slice's own: on a
    destination whose costs hardly vary, a tiny error is a huge loss of its own R^2, and
    slices could not be compared with each other or the limit. So a slice's difference is
    in the units of the overall score. Metrics with a sums form are scored for all the
    values of a column at once; ROC AUC is scored slice by slice."""
    y, cand, prod = np.asarray(y_true), np.asarray(candidate), np.asarray(production)
    form = _sum_form(metric, y, cand, prod)
    if metric == "r2" and form is not None:
        variance = float(np.var(y.astype(float)))
        form = form._replace(difference=lambda sums, rows: (
            sums[:, 0] / rows / variance if variance > 0 else np.full(len(sums), np.nan)))
    score = get_metric(metric).score
    worst: SliceGap | None = None
    for column, values in columns.items():
        labels, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
        codes = codes.ravel()
        counts = np.bincount(codes, minlength=len(labels))
        if form is not None:
            sums = np.column_stack([np.bincount(codes, weights=form.values[:, j],
                                                minlength=len(labels))
                                    for j in range(form.values.shape[1])])
            gaps = form.difference(sums, counts)
        else:
            gaps = np.full(len(labels), np.nan)
            for i in np.flatnonzero(counts >= min_rows):
                rows = codes == i
                with contextlib.suppress(ValueError):  # e.g. a slice holding one class
                    gaps[i] = score(y[rows], cand[rows]) - score(y[rows], prod[rows])
        for value, count, gap in zip(labels, counts, gaps, strict=True):
            if count < min_rows or not math.isfinite(gap):
                continue
            if worst is None or gap < worst.difference:
                worst = SliceGap(column, str(value), round(float(gap), 6), int(count))
    return worst
