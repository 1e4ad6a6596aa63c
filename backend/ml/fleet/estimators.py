"""The scikit-learn Pipelines specs train, and what each estimator family allows.

A spec builds its Pipeline through its `estimator` factory, or, without one, through
`boosted_pipeline`: HistGradientBoosting, which handles categoricals (ordinal-encoded,
unknown and missing as NaN) and missing numbers natively; the anomaly detector is an
IsolationForest on the numbers. `linear_pipeline` is the factory for series a tree cannot
extrapolate (a trend carries the target beyond every value seen in training).

The last step of a Pipeline is the model. Per family of model this module also declares
the parameter sets the "search" retry tries (`SEARCH_GRIDS`) and the types skops must trust
to load it (`SKOPS_INTERNALS`); `accepts_sample_weight` says whether recency weights can be
passed to its fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import ElasticNet, LogisticRegression, Ridge, RidgeClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.utils.validation import has_fit_parameter

if TYPE_CHECKING:
    from backend.ml.fleet.specs import ModelSpec

# Types inside a fitted estimator of each family that skops does not trust by itself, which
# a stored model of that family may hold (registry/formats.py). Read off `skops.io.
# get_untrusted_types` of fitted models and checked to be data, not code: tree arrays, a
# dtype, and the partial of scikit-learn's own `check_array` that the boosters keep.
# The imputer keeps the dtype it was fitted on; the linear models, the scaler and the
# one-hot encoder of `linear_pipeline` hold only arrays and numbers and need nothing here.
_BOOSTER_INTERNALS = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                      "functools.partial", "sklearn.utils.validation.check_array")
SKOPS_INTERNALS: dict[type, tuple[str, ...]] = {
    HistGradientBoostingRegressor: _BOOSTER_INTERNALS,
    HistGradientBoostingClassifier: _BOOSTER_INTERNALS,
    IsolationForest: ("sklearn.tree._tree.Tree", "numpy.dtype"),
    SimpleImputer: ("numpy.dtype",),
}

Grid = tuple[Mapping[str, Any], ...]
# The parameter sets the "search" retry tries, per family (a subclass inherits its parent's).
# The family's defaults are left out on purpose: the search is a retry's third attempt, after
# a plain fit already failed, so it must end in a different model.
_BOOSTER_GRID: Grid = (
    {"learning_rate": 0.05, "max_leaf_nodes": 63, "max_iter": 300},
    {"learning_rate": 0.1, "max_leaf_nodes": 15},
    {"learning_rate": 0.2, "max_leaf_nodes": 31, "l2_regularization": 1.0},
)
_PENALTY_GRID: Grid = ({"alpha": 0.1}, {"alpha": 10.0}, {"alpha": 100.0})
SEARCH_GRIDS: dict[type, Grid] = {
    HistGradientBoostingRegressor: _BOOSTER_GRID,
    HistGradientBoostingClassifier: _BOOSTER_GRID,
    IsolationForest: ({"n_estimators": 400}, {"max_samples": 1024}),
    Ridge: _PENALTY_GRID,
    RidgeClassifier: _PENALTY_GRID,
    ElasticNet: ({"alpha": 0.01}, {"alpha": 0.1}, {"alpha": 10.0}),  # and Lasso
    LogisticRegression: ({"C": 0.1}, {"C": 10.0}, {"C": 100.0}),
}


class EstimatorError(ValueError):
    """A spec's estimator factory built something the trainer cannot use."""


def build_pipeline(spec: ModelSpec, **overrides: Any) -> Pipeline:
    """The spec's fresh, unfitted Pipeline, with its params and `overrides` applied."""
    params = {**spec.params, **overrides}
    factory = spec.estimator if spec.estimator is not None else boosted_pipeline
    pipeline = factory(spec, params)
    if not isinstance(pipeline, Pipeline):
        raise EstimatorError(f"{spec.name}'s estimator factory returned "
                             f"{type(pipeline).__name__}, not a scikit-learn Pipeline")
    return pipeline


def boosted_pipeline(spec: ModelSpec, params: Mapping[str, Any]) -> Pipeline:
    """The default: HistGradientBoosting (IsolationForest for anomalies)."""
    if spec.task == "anomaly":
        features = ColumnTransformer(
            [("numbers", SimpleImputer(strategy="median"), list(spec.numeric))])
        model: Any = IsolationForest(**{"n_estimators": 200, "random_state": 0, **params})
        return Pipeline([("features", features), ("model", model)])
    cats, nums = list(spec.categorical), list(spec.numeric)
    features = ColumnTransformer(
        [("categories", OrdinalEncoder(handle_unknown="use_encoded_value",
                                       unknown_value=np.nan, encoded_missing_value=np.nan,
                                       dtype=np.float64), cats),
         ("numbers", "passthrough", nums)],
        verbose_feature_names_out=False)
    mask = [True] * len(cats) + [False] * len(nums)
    base = {"max_iter": 200, "learning_rate": 0.1, "random_state": 0,
            "categorical_features": mask}
    if spec.task == "regression":
        model = HistGradientBoostingRegressor(**{**base, **params})
    else:
        weights = {"class_weight": "balanced"} if spec.metric == "balanced_accuracy" else {}
        model = HistGradientBoostingClassifier(**{**base, **weights, **params})
    return Pipeline([("features", features), ("model", model)])


def linear_pipeline(spec: ModelSpec, params: Mapping[str, Any]) -> Pipeline:
    """Ridge (LogisticRegression for classes) on scaled numbers and one-hot categories.

    A linear model extrapolates: on a trending series, with lags as features, it carries
    the trend past the training range, where trees predict the largest value they saw.
    Missing numbers become the training median, missing and unseen categories no column.
    """
    if spec.task == "anomaly":
        raise EstimatorError(f"{spec.name}: linear_pipeline fits a target; an anomaly "
                             "detector has none")
    cats, nums = list(spec.categorical), list(spec.numeric)
    features = ColumnTransformer(
        [("categories", make_pipeline(
            SimpleImputer(strategy="constant", fill_value="__missing__"),
            OneHotEncoder(handle_unknown="ignore")), cats),
         ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), nums)],
        verbose_feature_names_out=False)
    model: Any
    if spec.task == "regression":
        model = Ridge(**params)
    else:
        weights = {"class_weight": "balanced"} if spec.metric == "balanced_accuracy" else {}
        model = LogisticRegression(**{"max_iter": 1000, **weights, **params})
    return Pipeline([("features", features), ("model", model)])


def sample_weight_key(pipeline: Pipeline) -> str | None:
    """The fit parameter that routes sample weights to the Pipeline's model
    (`model__sample_weight`), or None when the model's fit takes none."""
    name, model = pipeline.steps[-1]
    return f"{name}__sample_weight" if has_fit_parameter(model, "sample_weight") else None


def search_grid(spec: ModelSpec, pipeline: Pipeline) -> Grid:
    """The parameter sets a search tries: the spec's own, else its model family's.

    EstimatorError for a family without one: a search that could only repeat the plain fit
    is not a retry."""
    if spec.search_grid is not None:
        return spec.search_grid
    model = pipeline.steps[-1][1]
    for cls in type(model).__mro__:
        if cls in SEARCH_GRIDS:
            return SEARCH_GRIDS[cls]
    raise EstimatorError(f"{spec.name}: no search grid for {type(model).__name__}; declare "
                         "`search_grid` on the spec")
