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
rows' own difficulty cancels out. Metrics with a closed form over row sums (r2, 1 - WAPE,
accuracy, balanced accuracy, and ROC AUC from counts per score value) are computed for all
resamples at once with numpy; any other metric is looped. Slices compare point scores
only: a slice of a few hundred rows is noisy, which is why it must clear a limit ten times
the tolerance and a minimum size.

Not done here: predicting on the holdout (the run has the data and passes the arrays in),
and the alert a flagged promotion raises (`runs/promote.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from backend.ml.fleet.scoring import get_metric

# Resamples are drawn in blocks of about this many cells (resamples x rows) to bound memory.
BLOCK_CELLS = 1_000_000


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

Resampled = Callable[[np.ndarray], np.ndarray]  # row-index matrix -> difference per resample


def _difference_sums(y: np.ndarray, candidate: np.ndarray, production: np.ndarray,
                     metric: str) -> Resampled | None:
    """Candidate minus production per resample (one row of indices each) for metrics that
    are sums over rows; None for the others."""
    if metric == "r2":
        centred = y - y.mean()
        gain = (y - production) ** 2 - (y - candidate) ** 2
        squares, n = centred ** 2, len(y)

        def r2(idx: np.ndarray) -> np.ndarray:
            total = squares[idx].sum(1) - centred[idx].sum(1) ** 2 / n
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(total > 0, gain[idx].sum(1) / total, np.nan)
        return r2
    if metric == "one_minus_wape":
        size = np.abs(y)
        gain = np.abs(y - production) - np.abs(y - candidate)

        def wape(idx: np.ndarray) -> np.ndarray:
            total = size[idx].sum(1)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(total > 0, gain[idx].sum(1) / total, 0.0)
        return wape
    if metric == "roc_auc":
        return _auc_difference(y, candidate, production)
    hits = (y == candidate).astype(float) - (y == production).astype(float)
    if metric == "accuracy":
        return lambda idx: hits[idx].mean(1)
    if metric == "balanced_accuracy":
        classes = [((y == k).astype(float), hits * (y == k)) for k in np.unique(y)]

        def balanced(idx: np.ndarray) -> np.ndarray:
            recalls = []
            for members, member_hits in classes:
                support = members[idx].sum(1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    recalls.append(np.where(support > 0,
                                            member_hits[idx].sum(1) / support, np.nan))
            return np.asarray(np.nanmean(np.vstack(recalls), axis=0))
        return balanced
    return None


def _auc_difference(y: np.ndarray, candidate: np.ndarray,
                    production: np.ndarray) -> Resampled | None:
    """ROC AUC per resample from counts: each score value's positives times the negatives
    scored below it (ties count half), over positives times negatives; as scikit-learn's,
    the larger of two labels is the positive class."""
    labels = np.unique(y)
    if len(labels) != 2:
        return None
    positive = (y == labels[1]).astype(float)
    negative = 1.0 - positive
    ranked = [np.unique(values, return_inverse=True) for values in (candidate, production)]

    def auc(idx: np.ndarray, levels: int, inverse: np.ndarray) -> np.ndarray:
        cells = len(idx) * levels
        flat = (np.arange(len(idx))[:, None] * levels + inverse[idx]).ravel()
        pos = np.bincount(flat, positive[idx].ravel(), cells).reshape(len(idx), levels)
        neg = np.bincount(flat, negative[idx].ravel(), cells).reshape(len(idx), levels)
        below = np.cumsum(neg, axis=1) - neg
        pairs = pos.sum(1) * neg.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(pairs > 0, (pos * (below + neg / 2)).sum(1) / pairs, np.nan)

    def difference(idx: np.ndarray) -> np.ndarray:
        (cand_levels, cand_inverse), (prod_levels, prod_inverse) = ranked
        return np.asarray(auc(idx, len(cand_levels), cand_inverse.ravel())
                          - auc(idx, len(prod_levels), prod_inverse.ravel()))
    return difference


def paired_bootstrap(metric: str, y_true: Any, candidate: Any, production: Any, *,
                     resamples: int, seed: int, confidence: float) -> Interval | None:
    """The interval of candidate minus production over `resamples` paired resamples of the
    rows; None when no resample can be scored."""
    y, cand, prod = np.asarray(y_true), np.asarray(candidate), np.asarray(production)
    if y.dtype.kind in "fc":
        cand, prod = cand.astype(float), prod.astype(float)
    score = get_metric(metric).score
    difference = float(score(y, cand) - score(y, prod))
    n = len(y)
    vectorized = _difference_sums(y.astype(float) if metric in ("r2", "one_minus_wape") else y,
                                  cand, prod, metric)

    def looped(idx: np.ndarray) -> np.ndarray:
        out = np.full(len(idx), np.nan)
        for i, rows in enumerate(idx):
            try:
                out[i] = score(y[rows], cand[rows]) - score(y[rows], prod[rows])
            except ValueError:  # e.g. ROC AUC of a resample holding one class
                pass
        return out

    per_block = vectorized or looped
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_CELLS // max(n, 1))
    diffs = np.concatenate([per_block(rng.integers(0, n, size=(min(block, resamples - s), n)))
                            for s in range(0, resamples, block)]) if resamples and n else \
        np.array([])
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return None
    low, high = np.quantile(diffs, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(round(difference, 6), round(float(low), 6), round(float(high), 6),
                    confidence, len(diffs))


def _r2_on_rows(variance: float) -> Callable[[Any, Any], float]:
    """R^2 of some rows measured against the variance of all of them. A slice's own R^2
    divides by the slice's variance: on a destination whose costs hardly vary, a tiny
    error is a huge loss, and slices could not be compared with each other or the limit."""
    def score(y_true: Any, predicted: Any) -> float:
        errors = np.asarray(y_true, dtype=float) - np.asarray(predicted, dtype=float)
        return float(1 - np.mean(errors ** 2) / variance) if variance > 0 else float("nan")
    return score


def worst_slice(metric: str, y_true: Any, candidate: Any, production: Any,
                columns: Mapping[str, Any], *, min_rows: int) -> SliceGap | None:
    """The slice (one value of one column, at least `min_rows` rows) where the candidate
    scores lowest against production; None when no slice is large enough to score. R^2 on
    a slice is taken against the whole holdout's variance (`_r2_on_rows`), so a slice's
    difference is in the units of the overall score."""
    y, cand, prod = np.asarray(y_true), np.asarray(candidate), np.asarray(production)
    score = get_metric(metric).score
    if metric == "r2":  # against the whole holdout's variance: see `_r2_on_rows`
        score = _r2_on_rows(float(np.var(y.astype(float))))
    worst: SliceGap | None = None
    for column, values in columns.items():
        labels = np.asarray(values).astype(str)
        for value in np.unique(labels):
            rows = labels == value
            count = int(rows.sum())
            if count < min_rows:
                continue
            try:
                gap = float(score(y[rows], cand[rows]) - score(y[rows], prod[rows]))
            except ValueError:  # e.g. ROC AUC of a slice holding one class
                continue
            if math.isfinite(gap) and (worst is None or gap < worst.difference):
                worst = SliceGap(column, str(value), round(gap, 6), count)
    return worst
