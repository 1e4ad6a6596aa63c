"""The scikit-learn Pipeline a spec trains: column encoding, then the model.

HistGradientBoosting handles categoricals (ordinal-encoded, unknown and missing as NaN)
and missing numbers natively; the anomaly detector is an IsolationForest on the numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
)
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

if TYPE_CHECKING:
    from backend.ml.fleet.specs import ModelSpec


def build_pipeline(spec: ModelSpec, **overrides: Any) -> Pipeline:
    params = {**spec.params, **overrides}
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
