"""Direct loss estimation for regressors: a second model predicts each row's loss.

The loss model (a small HistGradientBoosting, seeded) learns on the version's holdout the
squared error (for R^2) or absolute error (for 1 - WAPE) of each row from the model's
encoded inputs and its prediction. On fresh rows the mean of its predictions estimates
the mean loss, and from it the metric:

- R^2 = 1 - MSE / Var(y). Var(y) of unlabelled rows is unknown; it is estimated as the
  variance of the predictions plus the estimated MSE (assuming the errors do not move with
  the predictions, as they should not for a model that fits). That is an assumption, and
  the rows' own realised R^2 can differ from it even when the MSE is right.
- 1 - WAPE = 1 - sum |error| / sum |y|, with sum |y| estimated by sum |prediction|.

The interval around the mean loss has two parts, both measured on the holdout by fitting
the loss model on two thirds of it and predicting the rest (three contiguous folds, in
time order): the noise of one window's realised losses around their prediction (the
per-row error's spread over sqrt(rows)), and the loss model's own error on a fold's mean
(its root mean square over the folds). Both are kept relative to the mean loss, so a
window where the model errs more gets a wider interval.

The fitted loss model is kept as plain numbers (`TreeEnsemble`: each tree's split
features, thresholds and leaf values), so a version's estimator travels inside its signed
JSON metadata and nothing is deserialized to use it. What it deliberately does not keep:
the booster's bin mapper and training state; it predicts, it cannot be refitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

Z_95 = 1.96
FOLDS = 3
LOSS_FOR = {"r2": "squared", "one_minus_wape": "absolute"}
LOSS_MODEL_PARAMS = {"max_iter": 60, "max_depth": 4, "learning_rate": 0.1,
                     "min_samples_leaf": 40, "random_state": 0}


def dense(x: Any) -> np.ndarray:
    """A pipeline's encoded inputs as a dense float array (one-hot encoders give sparse)."""
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=float)


def _inputs(encoded: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    return np.column_stack([encoded, predicted])


def _losses(kind: str, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    error = truth - predicted
    return np.asarray(error ** 2 if kind == "squared" else np.abs(error))


# The fields of a fitted booster's tree nodes that prediction reads (sklearn's
# TreePredictor: a missing value goes where `missing_go_to_left` says, else x <= threshold
# goes left).
NODE_FIELDS = ("value", "feature_idx", "num_threshold", "missing_go_to_left", "left", "right",
               "is_leaf")


@dataclass
class TreeEnsemble:
    """A fitted HistGradientBoostingRegressor (squared error, numeric inputs) as plain
    numbers: its baseline plus, per tree, the node arrays of NODE_FIELDS."""

    baseline: float
    trees: list[dict[str, list[float]]]

    @classmethod
    def of(cls, booster: HistGradientBoostingRegressor) -> TreeEnsemble:
        trees = [{f: tree.nodes[f].tolist() for f in NODE_FIELDS}
                 for (tree,) in booster._predictors]
        return cls(float(np.ravel(booster._baseline_prediction)[0]), trees)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        out = np.full(len(X), self.baseline)
        rows = np.arange(len(X))
        for tree in self.trees:
            a = {f: np.asarray(v) for f, v in tree.items()}
            leaf, feature = a["is_leaf"].astype(bool), a["feature_idx"].astype(int)
            left, right = a["left"].astype(int), a["right"].astype(int)
            node = np.zeros(len(X), dtype=int)
            while not leaf[node].all():
                x = X[rows, feature[node]]
                go_left = np.where(np.isnan(x), a["missing_go_to_left"][node].astype(bool),
                                   x <= a["num_threshold"][node])
                node = np.where(leaf[node], node, np.where(go_left, left[node], right[node]))
            out += a["value"][node]
        return out

    def state(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "trees": self.trees}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> TreeEnsemble:
        trees = state["trees"]
        if not isinstance(trees, list) or any(
                not isinstance(t, dict) or set(t) != set(NODE_FIELDS) for t in trees):
            raise ValueError("the loss model's trees are not node arrays of "
                             + ", ".join(NODE_FIELDS))
        return cls(float(state["baseline"]), trees)


@dataclass
class LossModel:
    metric: str
    kind: str  # "squared" or "absolute"
    model: TreeEnsemble
    relative_spread: float  # sd of (loss - predicted loss) / mean loss, per row
    relative_bias: float  # rms over folds of (mean loss - mean predicted) / mean loss

    def summary(self) -> dict[str, Any]:
        """The whole state, JSON-ready (`restore` reads it back)."""
        return {"metric": self.metric, "kind": self.kind,
                "relative_spread": self.relative_spread, "relative_bias": self.relative_bias,
                "params": dict(LOSS_MODEL_PARAMS), "model": self.model.state()}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> LossModel:
        if state.get("metric") not in LOSS_FOR or state.get("kind") not in ("squared",
                                                                            "absolute"):
            raise ValueError(f"unknown loss model metric {state.get('metric')!r} or kind "
                             f"{state.get('kind')!r}")
        return cls(state["metric"], state["kind"], TreeEnsemble.restore(state["model"]),
                   float(state["relative_spread"]), float(state["relative_bias"]))

    def estimate(self, encoded: np.ndarray,
                 predicted: np.ndarray) -> tuple[float, float, float]:
        """(value, low, high) of the metric on these rows."""
        per_row = np.maximum(self.model.predict(_inputs(encoded, predicted)), 0.0)
        mean = float(per_row.mean())
        half = mean * (Z_95 * self.relative_spread / np.sqrt(len(per_row))
                       + self.relative_bias)
        low_loss, high_loss = max(mean - half, 0.0), mean + half
        if self.kind == "squared":
            # R^2 with Var(y) estimated as the predictions' variance plus the MSE.
            spread = float(np.var(predicted))
            scale = None
        else:
            # 1 - WAPE with sum |y| estimated by sum |prediction|.
            spread, scale = 0.0, float(np.abs(predicted).mean())

        def metric(loss: float) -> float:
            if scale is not None:
                return 1.0 - loss / scale if scale > 0 else 0.0
            return 1.0 - loss / (spread + loss) if spread + loss > 0 else 0.0
        # Both metrics fall as the loss grows: the high loss gives the low end.
        return metric(mean), metric(high_loss), metric(low_loss)


def _fit(inputs: np.ndarray, losses: np.ndarray) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(**LOSS_MODEL_PARAMS).fit(inputs, losses)


def fit_loss_model(metric: str, encoded: np.ndarray, predicted: np.ndarray,
                   truth: np.ndarray) -> LossModel:
    """Fit on the holdout (rows in time order); measure the interval's parts out of fold."""
    kind = LOSS_FOR[metric]
    inputs, losses = _inputs(encoded, predicted), _losses(kind, truth, predicted)
    folds = np.array_split(np.arange(len(losses)), FOLDS)
    errors, biases = [], []
    for fold in folds:
        rest = np.setdiff1d(np.arange(len(losses)), fold)
        guess = np.maximum(_fit(inputs[rest], losses[rest]).predict(inputs[fold]), 0.0)
        level = max(float(losses[fold].mean()), 1e-12)
        errors.append((losses[fold] - guess) / level)
        biases.append(float(losses[fold].mean() - guess.mean()) / level)
    return LossModel(metric, kind, TreeEnsemble.of(_fit(inputs, losses)),
                     relative_spread=float(np.concatenate(errors).std()),
                     relative_bias=float(np.sqrt(np.mean(np.square(biases)))))
