"""Drift statistics: the population stability index of each feature on fresh rows against
the reference distribution stored with the version when it was trained, how many fresh
values lie outside anything the training rows held, how sure a live score is (a bootstrap
interval), and the one rule of when a changed world hurts a model.

A drift warning needs a feature that moved where the training rows never went (PSI of at
least PSI_ALERT, and NOVEL_SHARE of its fresh values outside the range of the version's
training rows) and a live score that, even at the high end of its interval, is more than
DRIFT_TOLERANCE under the version's holdout score (`drift_alert_due`). Why each part,
measured on the generated plant: 730 days, 17 models trained at the end of November, 30
calm December days checked once a day. The rule before (PSI and a score under the
holdout) raised 52 drift_detected warnings there, this one none.

- PSI against a year of training rows is high in every season: a few fresh weeks have no
  monsoon, other rain, another month (is_monsoon 2.3, rainfall_mm 0.7, dispatch_month 8.3
  in a calm December). A shift alone says nothing.
- Neither does a live score under the holdout: the holdout is the newest 20% of rows (July
  to November: monsoon and festivals), and on thousands of calm December rows
  risk_assessment scores 0.67 (holdout 0.77), quality_prediction 0.78 (0.86). A
  season-matched score cannot be had out of sample (last December is in the training rows,
  where risk_assessment scores 0.73: still a false "drop").
- What sets the scenarios apart is where their inputs go: every calm December value lies
  within what two years held, while each scenario puts fresh rows outside it (over 30
  days: rainfall beyond any monsoon 74%, diesel at 150 100%, on-time rates above any
  transporter's 48%, vibration in in/s 100%).
- A score on the first fresh day's 160 rows is noise (material_recommendation 0.79 against
  0.83; a ROC AUC on a handful of incidents 0.58): only the high end of its interval counts.

Deliberately not done: novelty of categories (an unseen category lands in the reference's
`__other__` share and shows in PSI) or of derived features (calendar fields and lags move
on by themselves: a month a short history has not seen yet is not a changed world).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from backend.ml.fleet import specs
from backend.ml.fleet.scoring import get_metric

# A feature has moved where the training rows never went when its PSI reaches PSI_ALERT
# and at least NOVEL_SHARE of its fresh values lie outside their range.
PSI_ALERT = 0.25
NOVEL_SHARE = 0.10
# How far a live score may fall before a changed world counts as hurting the model.
DRIFT_TOLERANCE = 0.02
CONFIDENCE = 0.90  # two-sided: the interval's high end is its 95th percentile
RESAMPLES = 200


def psi(reference: Mapping[str, Any], values: pd.Series) -> float:
    """Population stability index of `values` against a stored reference distribution."""
    eps = 1e-4
    if reference.get("kind") == "categorical":
        ref = dict(reference["shares"])
        seen = values.astype(str).where(values.notna(), "__missing__")
        shares = seen.value_counts(normalize=True)
        known = {k: float(shares.get(k, 0.0)) for k in ref if k != "__other__"}
        actual = {**known, "__other__": max(0.0, 1 - sum(known.values()))}
        expected = {k: float(ref.get(k, 0.0)) for k in actual}
    else:
        edges = np.asarray(reference.get("edges", []), dtype=float)
        ref_shares = np.asarray(reference.get("shares", []), dtype=float)
        num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        num = num[np.isfinite(num)]
        if len(ref_shares) == 0 or len(num) == 0:
            return 0.0
        counts = np.bincount(np.searchsorted(edges, num, side="right"),
                             minlength=len(ref_shares))
        actual = dict(enumerate(counts / counts.sum()))
        expected = dict(enumerate(ref_shares))
    a = np.array([actual[k] for k in expected]) + eps
    e = np.array([expected[k] for k in expected]) + eps
    return float(np.sum((a - e) * np.log(a / e)))


def outside_share(seen: tuple[float, float], values: pd.Series) -> float:
    """The share of (finite) `values` outside the closed range `seen` (low, high)."""
    num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    num = num[np.isfinite(num)]
    if len(num) == 0:
        return 0.0
    return float(((num < seen[0]) | (num > seen[1])).mean())


def drift_report(spec: specs.ModelSpec, reference: Mapping[str, Any], fresh: pd.DataFrame,
                 seen: Mapping[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """PSI per feature (`max_psi`, `top_features`) and, given the range of each numeric
    feature in the training rows (`seen`), the features that moved where those rows never
    went (`novel_features`: name, PSI, share of fresh values outside the range)."""
    scores = {f: round(psi(reference[f], fresh[f]), 4) for f in spec.features if f in reference}
    top = sorted(scores.items(), key=lambda kv: -kv[1])[:3]
    report: dict[str, Any] = {
        "max_psi": max(scores.values(), default=0.0),
        "top_features": [[name, value] for name, value in top if value >= 0.1]}
    if seen is not None:
        outside = {f: round(outside_share(seen[f], fresh[f]), 4) for f in seen
                   if f in fresh.columns}
        report["novel_features"] = [
            [f, scores[f], share] for f, share in sorted(outside.items(), key=lambda kv: -kv[1])
            if share >= NOVEL_SHARE and scores.get(f, 0.0) >= PSI_ALERT]
    return report


# ---- how sure a live score is ----------------------------------------------------------


@dataclass(frozen=True)
class LiveScore:
    """A score on fresh rows and its bootstrap interval (`low`, `high`)."""

    score: float
    low: float
    high: float
    samples: int


def _weighted_scores(metric: str, y: np.ndarray, values: np.ndarray,
                     w: np.ndarray) -> np.ndarray | None:
    """The metric under each row of weights `w` (resamples x rows), or None for a metric
    without a weighted form here. At unit weights each is the metric of
    `backend.ml.fleet.scoring` (`_resampled` checks that it still is)."""
    total = w.sum(axis=1)
    if metric == "accuracy":
        return np.asarray(w @ (y == values).astype(float) / total)
    if metric == "balanced_accuracy":
        recalls = []
        for cls in np.unique(y):
            mine = y == cls
            seen = w[:, mine].sum(axis=1)
            hit = w[:, mine] @ (values[mine] == cls).astype(float)
            recalls.append(np.divide(hit, seen, out=np.full(len(w), np.nan), where=seen > 0))
        return np.asarray(np.nanmean(np.column_stack(recalls), axis=1))
    if metric == "r2":
        y = y.astype(float)
        mean = w @ y / total
        sst = (w * (y[None, :] - mean[:, None]) ** 2).sum(axis=1)
        sse = w @ (y - values.astype(float)) ** 2
        return np.asarray(1 - np.divide(sse, sst, out=np.full(len(w), np.nan),
                                        where=sst > 0))
    if metric == "one_minus_wape":
        y = y.astype(float)
        denom = w @ np.abs(y)
        wape = np.divide(w @ np.abs(y - values.astype(float)), denom,
                         out=np.ones(len(w)), where=denom > 0)
        return np.asarray(1 - wape)
    if metric == "roc_auc":
        order = np.argsort(values, kind="stable")
        sorted_values, positive = values[order], (y[order] == 1)
        ws = w[:, order]
        # Ties share their credit: a positive beats the negatives strictly below it and
        # half of those level with it.
        starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
        neg = np.where(positive[None, :], 0.0, ws)
        pos = np.where(positive[None, :], ws, 0.0)
        neg_level = np.add.reduceat(neg, starts, axis=1)
        pos_level = np.add.reduceat(pos, starts, axis=1)
        below = np.cumsum(neg_level, axis=1) - neg_level
        pairs = pos.sum(axis=1) * neg.sum(axis=1)
        wins = (pos_level * (below + 0.5 * neg_level)).sum(axis=1)
        return np.asarray(np.divide(wins, pairs, out=np.full(len(w), np.nan), where=pairs > 0))
    return None


def _poisson_weights(rows: int, resamples: int, seed: int) -> np.ndarray:
    """Poisson(1) counts of each row in each resample (a bootstrap that needs no index)."""
    w = np.random.default_rng(seed).poisson(1.0, (resamples, rows)).astype(float)
    return np.asarray(w[w.sum(axis=1) > 0])


def _resampled(metric: str, y: np.ndarray, values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The metric on each resample of `w` (NaN where it is undefined)."""
    score_fn: Callable[[Any, Any], float] = get_metric(metric).score
    scores = _weighted_scores(metric, y, values, np.vstack([np.ones(len(y)), w]))
    if scores is not None and np.isclose(scores[0], score_fn(y, values), atol=1e-9):
        return scores[1:]
    found = []
    for counts in w[:100]:  # no weighted form: repeat rows by their counts (slower)
        idx = np.repeat(np.arange(len(y)), counts.astype(int))
        try:
            found.append(score_fn(y[idx], values[idx]))
        except ValueError:  # e.g. a resample with one class only
            found.append(np.nan)
    return np.asarray(found, dtype=float)


def _bounds(scores: np.ndarray, confidence: float) -> tuple[float, float] | None:
    scores = scores[np.isfinite(scores)]
    if len(scores) == 0:
        return None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)


def score_interval(metric: str, y_true: np.ndarray, values: np.ndarray, *,
                   resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                   seed: int = 0) -> LiveScore:
    """The metric's score and its percentile bootstrap interval, deterministic for `seed`."""
    y, values = np.asarray(y_true), np.asarray(values)
    score = float(get_metric(metric).score(y, values))
    found = _bounds(_resampled(metric, y, values, _poisson_weights(len(y), resamples, seed)),
                    confidence)
    low, high = found if found is not None else (score, score)
    return LiveScore(score, min(low, score), max(high, score), len(y))


# ---- when a changed world hurts a model ------------------------------------------------


@dataclass(frozen=True)
class ScoreChange:
    """A model's live score on the same rows before and after the world changed: the two
    scores, the high end of `after`'s interval and of the change's (after - before, both
    scored on each resample of the same rows, so what did not change cancels out)."""

    before: float
    after: float
    after_high: float
    change_high: float


def score_change(metric: str, before: tuple[np.ndarray, np.ndarray],
                 after: tuple[np.ndarray, np.ndarray], *, resamples: int = RESAMPLES,
                 confidence: float = CONFIDENCE, seed: int = 0) -> ScoreChange:
    """`before` and `after` are (truth, model output) on the same rows in the same order."""
    (y0, v0), (y1, v1) = (tuple(np.asarray(a) for a in pair) for pair in (before, after))
    if len(y0) != len(y1):
        raise ValueError(f"before and after must be the same rows ({len(y0)} != {len(y1)})")
    w = _poisson_weights(len(y0), resamples, seed)
    s0, s1 = _resampled(metric, y0, v0, w), _resampled(metric, y1, v1, w)
    score = get_metric(metric).score
    b, a = float(score(y0, v0)), float(score(y1, v1))
    after_bounds, change_bounds = _bounds(s1, confidence), _bounds(s1 - s0, confidence)
    return ScoreChange(b, a, max(a, after_bounds[1]) if after_bounds else a,
                       max(a - b, change_bounds[1]) if change_bounds else a - b)


def hurts(change: ScoreChange, threshold: float) -> bool:
    """Whether a change of the world hurt a model, beyond the noise of the rows it was
    scored on: even at the high end of their intervals, its live score is under the
    threshold, or fell by more than DRIFT_TOLERANCE."""
    return change.after_high < threshold or change.change_high < -DRIFT_TOLERANCE


def suffers(live: LiveScore, holdout_score: float | None) -> bool:
    """Whether a live score fell, when no "before" on the same rows exists: even the high
    end of its interval is more than DRIFT_TOLERANCE under the version's holdout score."""
    return holdout_score is not None and live.high < holdout_score - DRIFT_TOLERANCE


def drift_alert_due(report: Mapping[str, Any], live: LiveScore,
                    holdout_score: float | None) -> bool:
    """The drift warning's rule (see the module docstring): a feature moved where the
    training rows never went (`drift_report`'s `novel_features`) and the live score
    `suffers`."""
    return bool(report.get("novel_features")) and suffers(live, holdout_score)
