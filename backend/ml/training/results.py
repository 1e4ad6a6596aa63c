"""The guide's result shape for a training run, built from `TrainResult`s.

`status` is "success" only when every model trained or was unchanged; "partial" when some
did; "failed" when none did. A model that trained but scores below its threshold counts as
trained (it is reported with `passed: false`), since the promotion gate, not the run
status, decides whether it serves. A model "unchanged" (its data and parameters are those
of its production version, see `trainer.data_fingerprint`) was not fitted again: its
entry says `status: "unchanged"` with production's version and scores, and the run lists
it under `unchanged`. `models` names the models a run covered when it did not cover them
all. Scores are raw (an r2 may be below zero), each beside its
baseline and lift, score minus baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from backend.ml.fleet import specs
from backend.ml.fleet.specs import GROUPS
from backend.ml.registry.promotion import Decision
from backend.ml.training.trainer import TrainResult


def run_status(results: Sequence[TrainResult]) -> str:
    ok = sum(not r.failed for r in results)
    if results and ok == len(results):
        return "success"
    return "partial" if ok else "failed"


def model_detail(result: TrainResult, decision: Decision | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "metric": result.metric, "score": result.score, "baseline": result.baseline,
        "lift": result.lift, "threshold": result.threshold, "passed": result.passed,
        "rows": {"train": result.rows_train, "holdout": result.rows_holdout},
        "duration_seconds": result.duration_seconds, "fit_seconds": result.fit_seconds,
        "status": result.status,
    }
    if result.error:
        detail["error"] = result.error
    if decision is not None:
        detail.update(decision.as_detail())
    return detail


def covers_part(results: Sequence[TrainResult]) -> bool:
    """Whether a run covered only some of the models (its history row names them)."""
    return {r.name for r in results} != set(specs.MODEL_NAMES)


def model_outcome(summary: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One model's entry in a run's result shape (the guide nests it under its group)."""
    for group in summary.get("model_details", {}).values():
        if name in group:
            found: dict[str, Any] = group[name]
            return found
    raise KeyError(f"{name} is not in run {summary.get('run_id')}")


def summarize(results: Sequence[TrainResult], *, timestamp: str, duration_seconds: float,
              decisions: Mapping[str, Decision] | None = None, run_id: str | None = None,
              trigger: str | None = None) -> dict[str, Any]:
    """The guide's result shape, `{status, timestamp, duration_seconds, models_trained, ...,
    model_details}`, with each model's gate decision, and the run's id, trigger and the
    models it promoted when given: the one function that builds it."""
    decisions = decisions or {}
    ok = [r for r in results if not r.failed]
    details: dict[str, dict[str, Any]] = {f"{g}_models": {} for g in GROUPS}
    for r in results:
        details[f"{r.group}_models"][r.name] = model_detail(r, decisions.get(r.name))
    scores = [r.score for r in ok if r.score is not None]
    return {
        "status": run_status(results),
        "timestamp": timestamp,
        "duration_seconds": round(duration_seconds, 3),
        "models_trained": len(results),
        "successful_models": len(ok),
        "failed_models": len(results) - len(ok),
        "avg_accuracy": round(sum(scores) / len(scores), 4) if scores else None,
        "errors": [f"{r.name}: {r.error}" for r in results if r.failed],
        "model_details": details,
        "unchanged": [r.name for r in results if r.unchanged],
        **({"models": [r.name for r in results]} if covers_part(results) else {}),
        **({"run_id": run_id} if run_id is not None else {}),
        **({"trigger": trigger} if trigger is not None else {}),
        **({"promoted": sorted(n for n, d in decisions.items() if d.promoted)}
           if run_id is not None else {}),
    }
