"""Training and honest scoring: `train_one` for a spec, `train_many` for a fleet.

The holdout is always the latest 20% of labelled rows by event time, and every training
row is strictly earlier than every holdout row. Each result carries its score, the score
of a dummy baseline on the same holdout and the lift (score minus baseline), all raw (an
R^2 below zero is reported as it is), row counts, the data window, timings and the
training features' reference statistics (the monitor's drift checks compare to them).

The retry strategies work with whatever estimator a spec builds: recency weights go to the
model's fit only when it takes `sample_weight` (for one that does not, `recency_weighted`
trains on the recent rows it would have weighted most, and says so in `strategy`), and the
search tries the spec's grid or its model family's (`estimators.search_grid`).

Every result carries its data fingerprint (`data_fingerprint`): a hash of the table, the
time window, the row count and content of the labelled rows, the fit's options and the
spec's estimator with its parameters. Given production's fingerprint, `train_one` returns
a result with status "unchanged", without fitting, when the two are equal: the same fit
on the same rows would only make an identical version. A fit also carries `training_data`
(window, rows, content hashes, the options and parameters it followed) and `model_hash`,
the fitted estimator's hash, so `replay` can make it again and tell whether it is the same
(fingerprint.py owns all three).

`train_one` is a module-level, picklable function that computes and returns; it never
writes. `train_many` fans it out with joblib; the caller picks the backend (loky on this
machine, Dask on a cluster; see `parallel_backend`). One model's failure is recorded in
its result and never stops the others.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.pipeline import Pipeline
from sqlalchemy.engine import Engine

from backend.ml.data import loading, schema
from backend.ml.fleet import estimators
from backend.ml.fleet.scoring import get_metric, passes
from backend.ml.fleet.specs import ModelSpec
from backend.ml.training import fingerprint
from backend.ml.training.fingerprint import data_fingerprint

logger = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.2
STRATEGIES = ("full", "recent_window", "recency_weighted", "search")
DEFAULT_WINDOW_DAYS = 90.0
DEFAULT_HALF_LIFE_DAYS = 60.0
# A model that takes no sample weights trains, under "recency_weighted", on the rows of the
# last this many half-lives: those whose weight would have been at least 1/8.
UNWEIGHTED_HALF_LIVES = 3


OK, FAILED, UNCHANGED = "ok", "failed", "unchanged"


class TrainingError(Exception):
    """A model cannot be trained on the data given (too few rows, missing columns...)."""


@dataclass(frozen=True)
class TrainOptions:
    """What a fit tries. Retraining varies this so a retry is not the same fit again."""

    strategy: str = "full"
    window_days: float | None = None  # recent_window: train on the last N days only
    half_life_days: float | None = None  # recency_weighted: weight halves every N days
    params: Mapping[str, Any] = field(default_factory=dict)
    # Holdout = rows at or after this ISO time instead of the latest 20%. A retrain after
    # a failed check holds out only the newest half of the fresh rows, so the fit learns
    # from the other half (with the default split every fresh row could land in the holdout).
    holdout_since: str | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; strategies are "
                             f"{', '.join(STRATEGIES)}")


@dataclass
class TrainResult:
    name: str
    group: str
    metric: str
    threshold: float
    status: str  # OK, FAILED, or UNCHANGED (same fingerprint as production: not fitted)
    score: float | None = None  # raw: an R^2 may be below zero
    baseline: float | None = None  # the dummy model's score on the same holdout
    lift: float | None = None  # score - baseline
    passed: bool = False
    error: str | None = None
    rows_train: int = 0
    rows_holdout: int = 0
    rows_unlabelled: int = 0
    data_start: str | None = None
    data_end: str | None = None
    holdout_start: str | None = None
    duration_seconds: float = 0.0
    fit_seconds: float = 0.0
    strategy: str = "full"
    params: dict[str, Any] = field(default_factory=dict)
    feature_stats: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    training_data: dict[str, Any] = field(default_factory=dict)  # fingerprint.training_data
    model_hash: str | None = None  # fingerprint.model_hash of the fitted estimator
    # The version's performance estimator (monitoring.estimate.fitted_state): plain numbers
    # learnt on the holdout, to estimate its score on rows whose labels are not known yet.
    performance_estimator: dict[str, Any] | None = field(default=None, repr=False)
    estimator: Pipeline | None = field(default=None, repr=False)
    # The fit's decision values on its holdout rows, in their order: the promotion gate
    # compares production on the same rows without predicting them again. Never stored.
    holdout_values: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Fitted and scored: a version to save."""
        return self.status == OK

    @property
    def unchanged(self) -> bool:
        """Not fitted: its data and parameters are production's, so production stands."""
        return self.status == UNCHANGED

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def summary(self) -> dict[str, Any]:
        """Everything but the fitted estimator and its holdout values, JSON-ready (copied
        field by field: `asdict` would deep-copy the estimator only to drop it)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)
                if f.name not in ("estimator", "holdout_values")}


def input_columns(spec: ModelSpec) -> list[str]:
    """The table columns a spec reads: its time column, raw features, sources, target."""
    table = schema.get_table(spec.table)
    wanted = [schema.time_column(spec.table)]
    for col in (*spec.features, spec.target):
        sources = spec.derived.get(col, (col,))
        wanted += [s.removesuffix("@lag") for s in sources]
    return [c for c in dict.fromkeys(wanted) if c in table.columns]


def labelled_frame(spec: ModelSpec, table: pd.DataFrame, *,
                   keep: Sequence[str] = ()) -> tuple[pd.DataFrame, int]:
    """Prepared rows with a known target, in time order, and how many had none; `keep`:
    columns of the table to carry along when it has them (the check's `labelled_at`)."""
    columns = input_columns(spec)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise TrainingError(f"table {spec.table!r} lacks column(s) {', '.join(missing)}")
    columns += [c for c in keep if c in table.columns and c not in columns]
    frame = spec.frame(table[columns])
    absent = [c for c in (*spec.features, spec.target) if c not in frame.columns]
    if absent:
        raise TrainingError(f"prepared data lacks column(s) {', '.join(absent)}")
    labelled = frame[frame[spec.target].notna()]
    tcol = schema.time_column(spec.table)
    labelled = labelled.sort_values(tcol, kind="stable")
    return labelled, len(frame) - len(labelled)


def target_values(spec: ModelSpec, y: pd.Series) -> np.ndarray:
    if spec.task == "regression":
        return np.asarray(y.to_numpy(dtype=float))
    if pd.api.types.is_numeric_dtype(y):
        return np.asarray(y.to_numpy(dtype=float).astype(int))
    return np.asarray(y.astype(str).to_numpy())


def time_split(frame: pd.DataFrame, time_col: str,
               fraction: float = HOLDOUT_FRACTION) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Latest `fraction` of rows by time as holdout; all training rows strictly earlier.

    `frame` is in time order. Rows sharing a timestamp stay on one side, so with coarse
    times (monthly scorecards) the cut goes to whichever boundary is nearer `fraction`.
    """
    times = frame[time_col].to_numpy()
    if len(times) == 0:
        return frame, frame
    k = min(int(len(times) * (1 - fraction)), len(times) - 1)
    first = int(np.searchsorted(times, times[k], side="left"))  # the tie group's bounds
    after = int(np.searchsorted(times, times[k], side="right"))
    want = len(times) * fraction
    cut = first if (after == len(times)
                    or abs(len(times) - first - want) <= abs(len(times) - after - want)) else after
    return frame.iloc[:cut], frame.iloc[cut:]


def decision_values(spec: ModelSpec, estimator: Pipeline, X: pd.DataFrame) -> np.ndarray:
    """What the metric consumes: labels or values, or anomaly scores (higher = odder)."""
    if spec.task == "anomaly":
        return np.asarray(-estimator.score_samples(X))
    return np.asarray(estimator.predict(X))


def evaluate(spec: ModelSpec, estimator: Pipeline, frame: pd.DataFrame) -> float:
    """The spec's metric of a fitted estimator on labelled, prepared rows."""
    X = frame[list(spec.features)]
    return get_metric(spec.metric).score(target_values(spec, frame[spec.target]),
                                         decision_values(spec, estimator, X))


def baseline_score(spec: ModelSpec, train: pd.DataFrame, holdout: pd.DataFrame) -> float:
    """The naive model's score on the same holdout: the lift's reference point."""
    y_true = target_values(spec, holdout[spec.target])
    metric = get_metric(spec.metric)
    if spec.task == "anomaly":
        return metric.score(y_true, np.zeros(len(holdout)))
    dummy: Any = (DummyRegressor(strategy="mean") if spec.task == "regression"
                  else DummyClassifier(strategy="most_frequent"))
    dummy.fit(np.zeros((len(train), 1)), target_values(spec, train[spec.target]))
    return metric.score(y_true, dummy.predict(np.zeros((len(holdout), 1))))


def reference_stats(spec: ModelSpec, X: pd.DataFrame, bins: int = 10) -> dict[str, Any]:
    """Per-feature distribution of the training rows, for drift (PSI) checks later."""
    stats: dict[str, Any] = {}
    for col in spec.features:
        values = X[col]
        if col in spec.categorical:
            shares = values.astype(str).where(values.notna(), "__missing__").value_counts(
                normalize=True)
            top = shares.head(30)
            cats = {str(k): float(v) for k, v in top.items()}
            cats["__other__"] = float(max(0.0, 1 - top.sum()))
            stats[col] = {"kind": "categorical", "shares": cats}
        else:
            num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
            finite = num[np.isfinite(num)]
            if len(finite) == 0:
                stats[col] = {"kind": "numeric", "edges": [], "shares": [], "missing": 1.0}
                continue
            edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1))[1:-1])
            counts = np.bincount(np.searchsorted(edges, finite, side="right"),
                                 minlength=len(edges) + 1)
            stats[col] = {"kind": "numeric", "edges": edges.round(6).tolist(),
                          "shares": (counts / counts.sum()).round(6).tolist(),
                          "mean": float(finite.mean()), "std": float(finite.std()),
                          "missing": float(1 - len(finite) / max(len(num), 1))}
    return stats


def _sample_weight(times: pd.Series, half_life_days: float) -> np.ndarray:
    age = (times.max() - times).dt.total_seconds().to_numpy() / 86400
    return np.asarray(0.5 ** (age / half_life_days))


def _fitted_options(spec: ModelSpec, options: TrainOptions) -> TrainOptions:
    """The options a fit follows: recency weights become a recent window when the spec's
    model takes no sample weights (a fit ignoring the weights would repeat the plain fit)."""
    if options.strategy != "recency_weighted" or estimators.sample_weight_key(
            spec.make_estimator(**options.params)) is not None:
        return options
    half_life = options.half_life_days or DEFAULT_HALF_LIFE_DAYS
    logger.info("%s: the model takes no sample weights; recency_weighted trains on the last "
                "%g days instead", spec.name, UNWEIGHTED_HALF_LIVES * half_life)
    return replace(options, strategy="recent_window",
                   window_days=UNWEIGHTED_HALF_LIVES * half_life)


def _fit(spec: ModelSpec, train: pd.DataFrame, options: TrainOptions,
         params: Mapping[str, Any]) -> Pipeline:
    estimator = spec.make_estimator(**params)
    X = train[list(spec.features)]
    fit_kw: dict[str, Any] = {}
    key = estimators.sample_weight_key(estimator)
    if options.strategy == "recency_weighted" and key is not None:
        fit_kw[key] = _sample_weight(train[schema.time_column(spec.table)],
                                     options.half_life_days or DEFAULT_HALF_LIFE_DAYS)
    if spec.task == "anomaly":
        estimator.fit(X, **fit_kw)
    else:
        estimator.fit(X, target_values(spec, train[spec.target]), **fit_kw)
    return estimator


def _search(spec: ModelSpec, train: pd.DataFrame, options: TrainOptions) -> dict[str, Any]:
    """Pick the grid point that scores best on the latest slice of the training rows."""
    inner_train, inner_valid = time_split(train, schema.time_column(spec.table))
    if len(inner_train) < 2 or len(inner_valid) < 2:
        return dict(options.params)
    try:
        grid = estimators.search_grid(spec, spec.make_estimator(**options.params))
    except estimators.EstimatorError as exc:
        raise TrainingError(str(exc)) from None
    scored = []
    for point in grid:
        params = {**options.params, **point}
        with contextlib.suppress(ValueError):
            scored.append((evaluate(spec, _fit(spec, inner_train, options, params),
                                    inner_valid), params))
    return max(scored, key=lambda s: s[0])[1] if scored else dict(options.params)


def train_one(spec: ModelSpec, table: pd.DataFrame, *, threshold: float,
              options: TrainOptions = TrainOptions(),
              production_fingerprint: str | None = None) -> TrainResult:
    """Fit one spec on a loaded table and score it on the time-ordered holdout; or, when
    the data fingerprint equals `production_fingerprint`, a result "unchanged" with the
    row counts and window but no fit and no score."""
    started = time.perf_counter()
    result = TrainResult(spec.name, spec.group, spec.metric, threshold, status=FAILED,
                         strategy=options.strategy)
    try:
        options = _fitted_options(spec, options)
        result.strategy = options.strategy
        labelled, result.rows_unlabelled = labelled_frame(spec, table)
        tcol = schema.time_column(spec.table)
        if len(labelled) < spec.min_samples:
            raise TrainingError(f"{len(labelled)} labelled rows in {spec.table!r}; "
                                f"{spec.name} needs at least {spec.min_samples}")
        if options.holdout_since is not None:
            since = pd.Timestamp(options.holdout_since)
            train, holdout = labelled[labelled[tcol] < since], labelled[labelled[tcol] >= since]
        else:
            train, holdout = time_split(labelled, tcol)
        if options.strategy == "recent_window":
            days = options.window_days or DEFAULT_WINDOW_DAYS
            train = train[train[tcol] >= train[tcol].max() - pd.Timedelta(days=days)]
        if len(train) < 2 or len(holdout) < 2:
            raise TrainingError(f"{len(labelled)} labelled rows of {spec.table!r} cannot be "
                                "split into training and holdout by time")
        if spec.task == "classification" and train[spec.target].nunique() < 2:
            raise TrainingError(f"the training rows hold only one class of {spec.target!r}")
        result.data_fingerprint = data_fingerprint(spec, labelled, options)
        result.rows_train, result.rows_holdout = len(train), len(holdout)
        result.data_start = train[tcol].min().isoformat()
        result.data_end = holdout[tcol].max().isoformat()
        result.holdout_start = holdout[tcol].min().isoformat()
        if result.data_fingerprint == production_fingerprint:
            result.status = UNCHANGED
            result.duration_seconds = round(time.perf_counter() - started, 4)
            return result
        params = (_search(spec, train, options) if options.strategy == "search"
                  else dict(options.params))
        fit_started = time.perf_counter()
        estimator = _fit(spec, train, options, params)
        result.model_hash = fingerprint.model_hash(estimator)  # what was learnt, nothing more
        result.holdout_values = decision_values(spec, estimator, holdout[list(spec.features)])
        result.score = round(get_metric(spec.metric).score(
            target_values(spec, holdout[spec.target]), result.holdout_values), 6)
        result.fit_seconds = round(time.perf_counter() - fit_started, 4)
        result.baseline = round(baseline_score(spec, train, holdout), 6)
        result.lift = round(result.score - result.baseline, 6)
        result.passed = passes(result.score, threshold)
        result.params = {k: v for k, v in estimator[-1].get_params().items()
                         if isinstance(v, (int, float, str, bool, type(None)))}
        result.feature_stats = reference_stats(spec, train[list(spec.features)])
        result.training_data = fingerprint.training_data(spec, labelled, options, params)
        result.performance_estimator = _performance_estimator(spec, estimator, holdout)
        result.estimator = estimator
        result.status = OK
    except TrainingError as exc:
        result.error = str(exc)
    except Exception as exc:  # bad data must fail this model only, with its reason
        result.error = f"{type(exc).__name__}: {exc}"
        result.params = {"traceback": traceback.format_exc(limit=3)}
    result.duration_seconds = round(time.perf_counter() - started, 4)
    return result


def _performance_estimator(spec: ModelSpec, estimator: Pipeline,
                           holdout: pd.DataFrame) -> dict[str, Any] | None:
    """The estimator's state, or None with a warning: a version without one is still a
    good version (its checks then wait for labels)."""
    from backend.ml.monitoring.estimate import fitted_state  # it imports this module

    try:
        return fitted_state(spec, estimator, holdout)
    except Exception as exc:
        logger.warning("%s: no performance estimator: %s: %s", spec.name,
                       type(exc).__name__, exc)
        return None


def tables_for(specs: Iterable[ModelSpec]) -> list[str]:
    return list(dict.fromkeys(spec.table for spec in specs))


def columns_by_table(specs: Iterable[ModelSpec]) -> dict[str, list[str]]:
    """Each table these specs read, with the columns any of them reads (`input_columns`)."""
    columns: dict[str, list[str]] = {}
    for spec in specs:
        columns.setdefault(spec.table, []).extend(input_columns(spec))
    return {table: list(dict.fromkeys(wanted)) for table, wanted in columns.items()}


def load_tables(engine: Engine, specs: Iterable[ModelSpec]) -> dict[str, pd.DataFrame]:
    """Each table the specs need, loaded once and shared by all of them."""
    return {name: loading.load_table(engine, name) for name in tables_for(specs)}


def train_many(specs: Sequence[ModelSpec], tables: Mapping[str, pd.DataFrame], *,
               thresholds: Mapping[str, float], n_jobs: int = -1,
               options: Mapping[str, TrainOptions] | None = None,
               on_result: Callable[[TrainResult], None] | None = None,
               fingerprints: Mapping[str, str] | None = None) -> list[TrainResult]:
    """Train every spec, in parallel on the active joblib backend, results in spec order.

    `fingerprints` are production's data fingerprints by model name: a model whose data
    and parameters still have it is not fitted (its result is "unchanged").
    Workers get only the columns their spec reads. `on_result` is called in this process
    as each model finishes (progress). The biggest tables go first so the cores stay busy.
    """
    options = options or {}
    fingerprints = fingerprints or {}
    order = sorted(range(len(specs)), key=lambda i: -len(tables.get(specs[i].table, ())))
    missing = [s.table for s in specs if s.table not in tables]
    if missing:
        raise ValueError(f"tables not loaded: {', '.join(sorted(set(missing)))}")

    def task(i: int) -> Any:
        spec = specs[i]
        table = tables[spec.table]
        present = [c for c in input_columns(spec) if c in table.columns]
        return joblib.delayed(_train_indexed)(
            i, spec, table[present], threshold=thresholds[spec.name],
            options=options.get(spec.name, TrainOptions()),
            production_fingerprint=fingerprints.get(spec.name))

    results: list[TrainResult | None] = [None] * len(specs)
    parallel = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")
    for i, result in parallel(task(i) for i in order):
        results[i] = result
        if on_result is not None:
            on_result(result)
    return [r for r in results if r is not None]


def _train_indexed(i: int, spec: ModelSpec, table: pd.DataFrame, *, threshold: float,
                   options: TrainOptions,
                   production_fingerprint: str | None = None) -> tuple[int, TrainResult]:
    return i, train_one(spec, table, threshold=threshold, options=options,
                        production_fingerprint=production_fingerprint)


@contextlib.contextmanager
def parallel_backend(backend: str = "loky", address: str | None = None) -> Iterator[None]:
    """Run `train_many`'s fan-out on loky (local cores) or a dask.distributed cluster."""
    if backend == "dask":
        try:
            from distributed import Client
        except ImportError as exc:
            raise RuntimeError("TRAINING_BACKEND=dask needs the optional dependency: "
                               "pip install 'dask[distributed]'") from exc
        client = Client(address, timeout=10)  # type: ignore[no-untyped-call]
        with client, joblib.parallel_config(backend="dask"):
            yield
    else:
        with joblib.parallel_config(backend="loky"):
            yield
