"""Named model metrics, higher better and at most 1, and the threshold check.

A declarative registry in the manner of scikit-learn's scorers: `METRICS[name]` is a
`Metric`; `get_metric` fails with the list of valid names. Scores are raw: R^2 and
1 - WAPE go below zero for a model worse than predicting the mean (or nothing), and are
reported so. Clipping them at 0 would make a model a little worse than the mean and one
fifty times worse look the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics as skm


@dataclass(frozen=True)
class Metric:
    name: str
    score: Callable[[ArrayLike, ArrayLike], float]
    needs_scores: bool = False  # True: takes continuous scores (ROC AUC), not labels
    greater_is_better: bool = True


def _r2(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    return float(skm.r2_score(y_true, y_pred))


def _one_minus_wape(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    truth = np.asarray(y_true, dtype=float)
    denom = np.abs(truth).sum()
    if denom == 0:
        return 0.0
    return float(1 - np.abs(truth - np.asarray(y_pred, dtype=float)).sum() / denom)


def _accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    return float(skm.accuracy_score(y_true, y_pred))


def _balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    return float(skm.balanced_accuracy_score(y_true, y_pred))


def _roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    truth = np.asarray(y_true)
    if len(np.unique(truth)) < 2:
        raise ValueError("ROC AUC needs both labelled classes in the evaluation rows")
    return float(skm.roc_auc_score(truth, scores))


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("r2", _r2),
    Metric("one_minus_wape", _one_minus_wape),
    Metric("accuracy", _accuracy),
    Metric("balanced_accuracy", _balanced_accuracy),
    Metric("roc_auc", _roc_auc, needs_scores=True),
]}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; metrics are {', '.join(sorted(METRICS))}") \
            from None


def passes(score: float | None, threshold: float) -> bool:
    """A score passes when it reaches its threshold; a missing score never passes."""
    return score is not None and score >= threshold
