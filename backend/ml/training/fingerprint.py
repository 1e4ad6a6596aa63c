"""What a fit was made of, and what it made: fingerprints, training data records, model hashes.

`data_fingerprint` is one hex SHA-256 over the spec's table, the window, row count and
content of its labelled, prepared rows, the fit's options and the estimator's description:
equal fingerprints make the same fit (every estimator is seeded), so a run skips it. The
payload is frozen: stored versions are compared to it, and a change would make every
model look changed once.

`training_data` is the same facts spelled out for a person and for `replay`: the window,
rows, columns, content hash, the content hash of each calendar month (so a replay can say
where rows changed, not only that they did), the options the fit followed, the
estimator's description and `labels_as_of`, the time whose known labels the rows were
loaded with (`loading.load_table`; None when loaded unmasked), so a replay reads the same
labels. It is not part of `data_fingerprint`: the rows' content already says what was
seen. `model_hash` hashes a fitted estimator in memory: two fits of
one spec on the same rows with the same options and libraries give the same hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from joblib.hashing import NumpyHasher

from backend.ml.data import schema
from backend.ml.fleet.specs import ModelSpec

if TYPE_CHECKING:
    from backend.ml.training.trainer import TrainOptions


def _plain(value: Any) -> Any:
    """A parameter value as JSON: numbers and text as they are, containers item by item,
    anything else (an estimator, a function) by its type's or its own qualified name."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    named = value if callable(value) and hasattr(value, "__qualname__") else type(value)
    return f"{getattr(named, '__module__', '')}.{getattr(named, '__qualname__', named)}"


def estimator_description(spec: ModelSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """What a fit of `spec` with `params` is: its columns, task and metric, the classes of
    its Pipeline's steps and every parameter of every step, and the scikit-learn release."""
    import sklearn

    pipeline = spec.make_estimator(**params)
    steps = {name: _plain(step) for name, step in pipeline.steps}
    deep = {key: _plain(value) for key, value in pipeline.get_params(deep=True).items()
            if key not in ("steps", *steps)}
    return {"features": list(spec.features), "target": spec.target, "task": spec.task,
            "metric": spec.metric, "steps": steps, "params": deep,
            "scikit-learn": sklearn.__version__}


def _row_hashes(spec: ModelSpec, labelled: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    tcol = schema.time_column(spec.table)
    columns = list(dict.fromkeys([tcol, *spec.features, spec.target]))
    return columns, pd.util.hash_pandas_object(labelled[columns], index=False).to_numpy()


def _window(times: pd.Series) -> list[str | None]:
    return [None if times.empty else times.min().isoformat(),
            None if times.empty else times.max().isoformat()]


def data_fingerprint(spec: ModelSpec, labelled: pd.DataFrame, options: TrainOptions) -> str:
    """The fingerprint of a fit before it is made (hex SHA-256): the spec's table, the time
    window, row count and content of its labelled, prepared rows (features, target, time),
    the fit's options and the estimator's description. Equal fingerprints make the same
    fit: every estimator is seeded."""
    columns, rows = _row_hashes(spec, labelled)
    described = {
        "table": spec.table, "rows": len(labelled), "columns": columns,
        "window": _window(labelled[columns[0]]),
        "content": hashlib.sha256(rows.tobytes()).hexdigest(),
        "options": _plain(asdict(options)),
        "estimator": estimator_description(spec, options.params),
    }
    payload = json.dumps(described, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()


def training_data(spec: ModelSpec, labelled: pd.DataFrame, options: TrainOptions,
                  params: Mapping[str, Any]) -> dict[str, Any]:
    """The record of what a fit learnt from, JSON-ready: enough to make the same fit again.

    `train_options` are the options the fit followed with `params`, the parameters it was
    fitted with (a search's pick, so a replay needs no search). `content_by_month` maps
    "YYYY-MM" to [rows, first 16 hex of the SHA-256 of those rows]."""
    columns, rows = _row_hashes(spec, labelled)
    times = labelled[columns[0]]
    months: dict[str, list[Any]] = {}
    if len(labelled):
        keys = times.dt.strftime("%Y-%m").to_numpy()
        for month in dict.fromkeys(keys):  # rows are in time order: months come sorted
            chosen = rows[keys == month]
            months[str(month)] = [int(len(chosen)),
                                  hashlib.sha256(chosen.tobytes()).hexdigest()[:16]]
    followed = {**asdict(options), "params": dict(params)}
    return {"table": spec.table, "window": _window(times), "rows": len(labelled),
            "labels_as_of": labelled.attrs.get("labels_as_of"),
            "columns": columns, "content_sha256": hashlib.sha256(rows.tobytes()).hexdigest(),
            "content_by_month": months, "train_options": _plain(followed),
            "estimator": estimator_description(spec, params)}


# Attributes that say how a fit ran in this process, not what it learnt: HistGradientBoosting's
# bin mapper keeps the OpenMP thread count, which is lower in a loky worker than in a single
# process. They are left out of `model_hash`, or a version fitted by a run's worker would
# never match its replay.
RUNTIME_ATTRIBUTES = frozenset({"n_threads"})


class _StateHasher(NumpyHasher):  # type: ignore[misc]  # joblib has no type hints
    """joblib's hasher (arrays by their bytes, dicts and sets in sorted order), minus the
    runtime attributes of every object's state. An empty array is hashed by its dtype and
    shape: its strides (part of joblib's hash) change on a pickle round trip, (0,) to (8,),
    so a fit returned by a worker process would hash otherwise."""

    def save(self, obj: Any) -> None:
        if type(obj) is dict and not RUNTIME_ATTRIBUTES.isdisjoint(obj):
            obj = {k: v for k, v in obj.items() if k not in RUNTIME_ATTRIBUTES}
        elif isinstance(obj, np.ndarray) and obj.size == 0:
            obj = ("EMPTY_ARRAY", type(obj).__name__, obj.dtype.str, obj.shape)
        super().save(obj)


def model_hash(estimator: Any) -> str:
    """A hash of a fitted estimator's learnt state, taken in memory (not of its file, whose
    bytes depend on the format and library that wrote it)."""
    return str(_StateHasher(hash_name="md5").hash(estimator))
