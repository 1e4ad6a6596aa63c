"""Drift statistics: the population stability index of each feature on fresh rows against
the reference distribution stored with the version when it was trained."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from backend.ml.fleet import specs

# PSI at or above this on a feature, with a live score that suffers, is alerted.
PSI_ALERT = 0.25


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


def drift_report(spec: specs.ModelSpec, reference: Mapping[str, Any],
                 fresh: pd.DataFrame) -> dict[str, Any]:
    scores = {f: round(psi(reference[f], fresh[f]), 4) for f in spec.features if f in reference}
    top = sorted(scores.items(), key=lambda kv: -kv[1])[:3]
    return {"max_psi": max(scores.values(), default=0.0),
            "top_features": [[name, value] for name, value in top if value >= 0.1]}
