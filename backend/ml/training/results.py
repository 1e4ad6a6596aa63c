"""The guide's result shape for a training run, built from `TrainResult`s.

`status` is "success" only when every model trained; "partial" when some did; "failed"
when none did. A model that trained but scores below its threshold counts as trained
(it is reported with `passed: false`), since the promotion gate, not the run status,
decides whether it serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backend.ml.fleet.specs import GROUPS
from backend.ml.training.trainer import TrainResult


def run_status(results: Sequence[TrainResult]) -> str:
    ok = sum(r.ok for r in results)
    if results and ok == len(results):
        return "success"
    return "partial" if ok else "failed"


def model_detail(result: TrainResult) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "metric": result.metric, "score": result.score, "baseline": result.baseline,
        "threshold": result.threshold, "passed": result.passed,
        "rows": {"train": result.rows_train, "holdout": result.rows_holdout},
        "duration_seconds": result.duration_seconds, "status": result.status,
    }
    if result.error:
        detail["error"] = result.error
    return detail


def summarize(results: Sequence[TrainResult], *, timestamp: str,
              duration_seconds: float) -> dict[str, Any]:
    """`{status, timestamp, duration_seconds, models_trained, ..., model_details}`."""
    ok = [r for r in results if r.ok]
    details: dict[str, dict[str, Any]] = {f"{g}_models": {} for g in GROUPS}
    for r in results:
        details[f"{r.group}_models"][r.name] = model_detail(r)
    scores = [r.score for r in ok if r.score is not None]
    return {
        "status": run_status(results),
        "timestamp": timestamp,
        "duration_seconds": round(duration_seconds, 3),
        "models_trained": len(results),
        "successful_models": len(ok),
        "failed_models": len(results) - len(ok),
        "avg_accuracy": round(sum(scores) / len(scores), 4) if scores else None,
        "errors": [f"{r.name}: {r.error}" for r in results if not r.ok],
        "model_details": details,
    }
