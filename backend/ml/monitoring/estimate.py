"""Estimated performance on fresh rows whose labels have not arrived yet.

In the plant a delay, a rating or a damage report is known days after the dispatch; the
model's outputs are known at once. From them this module estimates the spec's metric:

- classifiers, CBPE (confidence-based performance estimation): at training time the
  model's predicted probability of each class is calibrated on the holdout (isotonic, one
  class against the rest, rows renormalised), so a calibrated 0.8 is right four times in
  five. On fresh rows the expected confusion counts follow from the calibrated
  probabilities: accuracy is the mean probability of the predicted class; balanced accuracy
  the mean over classes of expected hits / expected members. The interval is a parametric
  bootstrap: labels drawn from the calibrated probabilities.
- regressors, direct loss estimation (`loss_estimation.py`): a second, small model fitted
  on the holdout predicts each row's loss (squared error for R^2, absolute error for
  1 - WAPE) from the model's inputs and its prediction.

What it deliberately does not do: see a change in how outcomes follow from inputs. Both
methods assume that, given the inputs (and the model's output), the chance of an error is
what it was on the holdout; a shift in the inputs (a new mix of destinations) is seen, a new
rule (waterlogged tracks past 60 mm) is not, however large. Anomaly detectors (ROC AUC
against labelled incidents) are not estimated: an unsupervised score has no calibrated
probability of an incident to count from.

Training calls `fit_estimator` once per version (`fitted_state`, in the worker that fitted
it); the version's metadata carries `summary()`, the whole state as plain numbers (a
classifier's isotonic breakpoints, a regressor's loss trees), inside the signature the
store checks before anything of a version is used. The check `restore`s it from verified
metadata and calls `estimate` on the fresh unlabelled rows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.pipeline import Pipeline

from backend.ml.fleet.specs import ModelSpec, get_spec
from backend.ml.monitoring import loss_estimation
from backend.ml.training.trainer import target_values

CBPE, DLE = "cbpe", "direct_loss_estimation"
# The metrics each method estimates; every other spec metric is refused with this list.
CLASSIFIER_METRICS = ("accuracy", "balanced_accuracy")
SUPPORTED = {"classification": CLASSIFIER_METRICS,
             "regression": tuple(loss_estimation.LOSS_FOR)}
BOOTSTRAP_DRAWS = 200
Z_95 = 1.96


class EstimationError(ValueError):
    """A model, metric or set of rows the estimator cannot work with; the message is one
    line naming what is wrong."""


@dataclass(frozen=True)
class Estimate:
    """The spec's metric estimated on `rows` unlabelled rows, with a 95% interval. An
    estimate, never a score: the check must not treat it as a measured one."""

    metric: str
    estimated_value: float
    estimated_low: float
    estimated_high: float
    rows: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "estimated_value": round(float(self.estimated_value), 6),
                "estimated_low": round(float(self.estimated_low), 6),
                "estimated_high": round(float(self.estimated_high), 6), "rows": self.rows,
                "method": self.method}


@dataclass
class ModelOutputs:
    """One pass of the model over fresh rows: what scoring needs (`predicted`, identical to
    the pipeline's predict) and what estimation needs besides."""

    predicted: np.ndarray
    proba: np.ndarray | None = None  # classifiers: (rows, classes), columns in `classes_`
    encoded: np.ndarray | None = None  # regressors: the pipeline's transformed inputs


@dataclass
class PerformanceEstimator:
    """What `fit_estimator` learnt on a version's holdout. A classifier's is plain numbers
    (class names and isotonic breakpoints); a regressor's holds its fitted loss model."""

    model: str
    metric: str
    method: str
    features: tuple[str, ...]
    holdout_rows: int
    classes: list[Any] = field(default_factory=list)
    # Per class: the isotonic map's breakpoints (raw probability -> calibrated).
    breakpoints: list[tuple[list[float], list[float]]] = field(default_factory=list)
    loss: loss_estimation.LossModel | None = None

    def summary(self) -> dict[str, Any]:
        """The whole state, JSON-ready: what `restore` reads back."""
        out: dict[str, Any] = {"model": self.model, "metric": self.metric,
                               "method": self.method, "holdout_rows": self.holdout_rows,
                               "features": list(self.features)}
        if self.method == CBPE:
            out["classes"] = [str(c) for c in self.classes]
            out["breakpoints"] = [[list(x), list(y)] for x, y in self.breakpoints]
        elif self.loss is not None:
            out["loss"] = self.loss.summary()
        return out


def restore(spec: ModelSpec, state: Any, pipeline: Pipeline) -> PerformanceEstimator:
    """The estimator a version's (verified) metadata carries, for `pipeline`, the version's
    own model: its classes are taken from the model, matched to the stored names.
    EstimationError, one line, when the state does not fit the spec or the model."""
    if not isinstance(state, dict):
        raise EstimationError(f"{spec.name}: the version carries no performance estimator "
                              "(trained before estimators were kept, or not estimable)")
    try:
        method, metric = state["method"], state["metric"]
        expected = CBPE if spec.task == "classification" else DLE
        if (state["model"], metric, method) != (spec.name, spec.metric, expected):
            raise ValueError(f"it is a {method} estimator of {state['model']}'s {metric}")
        features = tuple(state["features"])
        if features != spec.features:
            raise ValueError("its features are not the spec's")
        if method == CBPE:
            classes = list(pipeline.classes_)
            if [str(c) for c in classes] != state["classes"]:
                raise ValueError(f"its classes {state['classes']} are not the model's")
            breakpoints = [(list(map(float, x)), list(map(float, y)))
                           for x, y in state["breakpoints"]]
            if len(breakpoints) != len(classes):
                raise ValueError("one isotonic map per class is needed")
            return PerformanceEstimator(spec.name, metric, CBPE, features,
                                        int(state["holdout_rows"]), classes=classes,
                                        breakpoints=breakpoints)
        return PerformanceEstimator(spec.name, metric, DLE, features,
                                    int(state["holdout_rows"]),
                                    loss=loss_estimation.LossModel.restore(state["loss"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EstimationError(f"{spec.name}: the stored performance estimator cannot be "
                              f"used: {exc}") from exc


def fitted_state(spec: ModelSpec, pipeline: Pipeline,
                 holdout_frame: pd.DataFrame) -> dict[str, Any] | None:
    """`fit_estimator(...).summary()` for a version's metadata, with the seconds it took;
    None for a spec whose metric is not estimated (anomaly detection)."""
    if not supported(spec):
        return None
    started = time.perf_counter()
    state = fit_estimator(spec, pipeline, holdout_frame).summary()
    return {**state, "fit_seconds": round(time.perf_counter() - started, 4)}


def supported(spec: ModelSpec) -> bool:
    return spec.metric in SUPPORTED.get(spec.task, ())


def check_supported(spec: ModelSpec) -> None:
    """EstimationError, one line naming why, for a spec whose metric is not estimated."""
    if spec.task == "anomaly":
        raise EstimationError(f"{spec.name}: an anomaly detector's {spec.metric} is not "
                              "estimated without labels")
    if not supported(spec):
        raise EstimationError(f"{spec.name}: {spec.metric} is not estimated for a "
                              f"{spec.task} model; estimated metrics are "
                              f"{', '.join(SUPPORTED[spec.task])}")


def _features(features: tuple[str, ...], frame: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise EstimationError(f"the rows lack feature column(s) {', '.join(missing)}")
    if frame.empty:
        raise EstimationError("no rows to estimate on")
    return frame[list(features)]


def model_outputs(spec: ModelSpec, pipeline: Pipeline, X: pd.DataFrame) -> ModelOutputs:
    """Run the model once over `X`, keeping what both scoring and estimation read."""
    if spec.task == "classification":
        if not hasattr(pipeline, "predict_proba"):
            raise EstimationError(f"{spec.name}: {type(pipeline[-1]).__name__} gives no "
                                  "class probabilities to calibrate")
        proba = np.asarray(pipeline.predict_proba(X))
        # The class of highest probability is what predict returns for the fleet's
        # classifiers (HistGradientBoosting, LogisticRegression).
        return ModelOutputs(np.asarray(pipeline.classes_)[proba.argmax(axis=1)], proba=proba)
    encoded = loss_estimation.dense(pipeline[:-1].transform(X))
    return ModelOutputs(np.asarray(pipeline[-1].predict(encoded)), encoded=encoded)


def fit_estimator(spec: ModelSpec, pipeline: Pipeline,
                  holdout_frame: pd.DataFrame) -> PerformanceEstimator:
    """Learn, on the version's labelled holdout rows, how its outputs relate to its errors."""
    check_supported(spec)
    X = _features(spec.features, holdout_frame)
    if spec.target not in holdout_frame.columns:
        raise EstimationError(f"the holdout rows lack the target column {spec.target!r}")
    outputs = model_outputs(spec, pipeline, X)
    truth = target_values(spec, holdout_frame[spec.target])
    if spec.task == "classification":
        classes = list(pipeline.classes_)
        assert outputs.proba is not None
        return PerformanceEstimator(spec.name, spec.metric, CBPE, spec.features, len(X),
                                    classes=classes,
                                    breakpoints=_calibrate(outputs.proba, truth, classes))
    assert outputs.encoded is not None
    loss = loss_estimation.fit_loss_model(spec.metric, outputs.encoded, outputs.predicted,
                                          truth)
    return PerformanceEstimator(spec.name, spec.metric, DLE, spec.features, len(X), loss=loss)


def estimate(estimator: PerformanceEstimator, pipeline: Pipeline, fresh_frame: pd.DataFrame,
             *, outputs: ModelOutputs | None = None, seed: int = 0) -> Estimate:
    """The metric on `fresh_frame` estimated from the model's outputs alone: the target
    column, if present, is never read."""
    X = _features(estimator.features, fresh_frame)
    if outputs is None:
        outputs = model_outputs(get_spec(estimator.model), pipeline, X)
    if len(outputs.predicted) != len(X):
        raise EstimationError(f"{len(outputs.predicted)} model outputs for {len(X)} rows")
    if estimator.method == CBPE:
        assert outputs.proba is not None
        value, low, high = _cbpe(estimator, outputs, np.random.default_rng(seed))
    else:
        assert estimator.loss is not None and outputs.encoded is not None
        value, low, high = estimator.loss.estimate(outputs.encoded, outputs.predicted)
    return Estimate(estimator.metric, float(value), float(low), float(high), len(X),
                    estimator.method)


def _calibrate(proba: np.ndarray, truth: np.ndarray,
               classes: list[Any]) -> list[tuple[list[float], list[float]]]:
    maps = []
    for k, cls in enumerate(classes):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(proba[:, k], (truth == cls).astype(float))
        maps.append((iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist()))
    return maps


def calibrated(estimator: PerformanceEstimator, proba: np.ndarray) -> np.ndarray:
    """The rows' class probabilities through the holdout's isotonic maps, renormalised."""
    cal = np.column_stack([np.interp(proba[:, k], x, y)
                           for k, (x, y) in enumerate(estimator.breakpoints)])
    total = cal.sum(axis=1, keepdims=True)
    # A row every map sends to 0 keeps its raw probabilities rather than dividing by zero.
    return np.where(total > 0, cal / np.where(total > 0, total, 1.0), proba)


def _cbpe(estimator: PerformanceEstimator, outputs: ModelOutputs,
          rng: np.random.Generator) -> tuple[float, float, float]:
    assert outputs.proba is not None
    probs = calibrated(estimator, outputs.proba)
    index = {c: k for k, c in enumerate(estimator.classes)}
    predicted = np.array([index[c] for c in outputs.predicted])
    rows = np.arange(len(predicted))
    if estimator.metric == "accuracy":
        hit = probs[rows, predicted]
        value = float(hit.mean())
        # Each row is right with its calibrated probability: a sum of Bernoullis.
        half = Z_95 * float(np.sqrt((hit * (1 - hit)).sum())) / len(hit)
        return value, max(0.0, value - half), min(1.0, value + half)
    k = probs.shape[1]
    value = _balanced(probs.sum(axis=0), np.bincount(
        predicted, weights=probs[rows, predicted], minlength=k))
    # Labels drawn from the calibrated probabilities, the metric computed on each draw.
    labels = (rng.random((BOOTSTRAP_DRAWS, len(rows), 1))
              > probs.cumsum(axis=1)[None, :, :-1]).sum(axis=2)
    hit = labels == predicted[None, :]
    members = np.stack([(labels == c).sum(axis=1) for c in range(k)], axis=-1)
    hits = np.stack([(hit & (predicted == c)).sum(axis=1) for c in range(k)], axis=-1)
    low, high = np.percentile(_balanced_rows(members, hits), [2.5, 97.5])
    return value, float(min(low, value)), float(max(high, value))


def _balanced_rows(members: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """Balanced accuracy per draw from per-class member and hit counts (draws, classes):
    the mean over classes of hits / members, for the classes present (as the metric
    averages over the classes present in the truth; in expectation, present at least half
    a row)."""
    present = members >= 0.5
    recall = np.where(present, hits / np.where(present, members, 1.0), 0.0)
    return np.asarray(recall.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1))


def _balanced(members: np.ndarray, hits: np.ndarray) -> float:
    return float(_balanced_rows(members[None], hits[None])[0])


def supported_metrics() -> Mapping[str, tuple[str, ...]]:
    """Per task, the metrics estimated without labels (anomaly: none)."""
    return {**SUPPORTED, "anomaly": ()}
