"""After the fits: save every version, gate each against production re-scored on the same
holdout (both models predict those rows once; the gate's interval and slices come from
those predictions), record the version with its decision, back up the production set
about to be replaced, then move the aliases.

A fit whose data fingerprint and parameters are production's (or that was not fitted for
that reason, `trainer.UNCHANGED`) is recorded as "unchanged": no version is saved, nothing
is backed up or moved, and its decision names production's version.

The order is what makes a crash safe: versions are committed before any alias moves, the
backup is whole before the first move, and each move is one atomic registry write, so a
model serves either its old or its new version, never neither.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from backend.ml.data import schema
from backend.ml.fleet import specs
from backend.ml.fleet.scoring import get_metric, passes
from backend.ml.registry import predictions
from backend.ml.registry.backups import backup_production, prune_backups
from backend.ml.registry.promotion import (
    Decision,
    Interval,
    SliceGap,
    paired_bootstrap,
    promotion_decision,
    worst_slice,
)
from backend.ml.registry.store import ModelStore, StoreError
from backend.ml.runs.services import Services
from backend.ml.training import trainer

logger = logging.getLogger(__name__)


def save_and_promote(services: Services, run_id: str, results: Sequence[trainer.TrainResult],
                     tables: Mapping[str, pd.DataFrame], actor: str) -> dict[str, Decision]:
    """Save, gate, back up and promote the successful fits of a run; each one's decision."""
    store, alerts, settings = services.store, services.alerts, services.settings
    decisions: dict[str, Decision] = {}
    winners: dict[str, tuple[str, str]] = {}
    for result in results:
        if result.failed:
            continue
        if result.unchanged or refits_production(store, result):
            decisions[result.name] = keep_unchanged(result,
                                                    verified_production(store, result.name))
            continue
        meta = store.save(result, run_id=run_id)
        production, interval, worst, keys, _ = compare_on_holdout(services, result, tables)
        promote, reason, below = promotion_decision(
            candidate_score=float(result.score or 0.0), candidate_passed=result.passed,
            production_score_on_same_holdout=production,
            tolerance=settings.PROMOTION_TOLERANCE, threshold=result.threshold,
            interval=interval, worst_slice=worst, slice_limit=settings.PROMOTION_SLICE_LIMIT)
        decision = decisions[result.name] = Decision(meta["version"], promote, reason,
                                                     production, below, interval, worst)
        gate = {k: v for k, v in decision.as_detail().items() if k != "version"}
        services.history.add_model_version(result.name, {
            **{k: meta.get(k) for k in ("version", "run_id", "created_at", "metric", "score",
                                        "baseline", "threshold", "passed", "sha256",
                                        "data_fingerprint")}, "gate": gate})
        if promote:
            winners[result.name] = (meta["version"], reason)
            if keys is not None and result.holdout_values is not None:
                # so that tomorrow's gate, with this version as production, reuses them
                predictions.remember(store, result.name, meta["version"],
                                     list(specs.get_spec(result.name).features), keys,
                                     result.holdout_values)
            if below:  # serves although under its threshold: the best there is
                better = ("there is nothing better" if production is None else
                          f"it beats production ({production:.4f} on the same holdout)")
                alerts.notify("warning", "accuracy_below_threshold",
                              f"{result.name}'s {meta['version']} scored {result.score:.4f}, "
                              f"under its threshold {result.threshold:.2f}; it serves "
                              f"because {better}", model=result.name,
                              run_id=run_id, score=result.score, threshold=result.threshold,
                              production_score=production, attempts=1)
        else:
            store.reject(result.name, meta["version"])
    replaced = [n for n in winners if store.aliases(n)["production"] is not None]
    if replaced and settings.BACKUP_MODELS:
        # The run's own store: one built here would verify with the environment's key,
        # not these settings' (a backtest's or a benchmark's), and back up nothing
        backup_production(settings.MODELS_DIR, settings.LOGS_DIR, replaced,
                          key=settings.BACKUP_ENCRYPTION_KEY, store=store)
    for name, (version, reason) in winners.items():
        store.promote(name, version, reason=f"{reason} (run {run_id})", actor=actor)
    if settings.BACKUP_MODELS:
        prune_backups(settings.LOGS_DIR, settings.BACKUP_RETENTION_DAYS)
    return decisions


def verified_production(store: ModelStore, name: str) -> dict[str, Any] | None:
    """Production's metadata when its signature and file verify; else None (a version that
    fails verification is never a reason not to fit a new one)."""
    try:
        version = store.aliases(name)["production"]
        return None if version is None else store.verify(name, version)
    except (StoreError, OSError):  # unreadable: saving, later, says why with the path
        return None


def production_fingerprints(store: ModelStore, names: Iterable[str]) -> dict[str, str]:
    """Production's data fingerprint per model, from verified metadata: the fits a run can
    skip (`trainer.train_many`). Versions saved before fingerprints existed have none."""
    found: dict[str, str] = {}
    for name in names:
        meta = verified_production(store, name)
        if meta is not None and isinstance(meta.get("data_fingerprint"), str):
            found[name] = meta["data_fingerprint"]
    return found


def same_fit(result: trainer.TrainResult, production: Mapping[str, Any]) -> bool:
    """A fit of production's data with production's parameters: an identical version."""
    return (result.data_fingerprint is not None
            and production.get("data_fingerprint") == result.data_fingerprint
            and production.get("params") == result.params)


def refits_production(store: ModelStore, result: trainer.TrainResult) -> bool:
    """Whether a fit is production's fit again (production's fingerprint and parameters),
    by production's metadata when it verifies. Read unverified first: that is cheap."""
    try:
        meta = store.production_meta(result.name)
    except (StoreError, OSError):
        return False
    if meta is None or not same_fit(result, meta):
        return False
    verified = verified_production(store, result.name)
    return verified is not None and same_fit(result, verified)


def keep_unchanged(result: trainer.TrainResult,
                   production: Mapping[str, Any] | None) -> Decision:
    """Record `result` as unchanged: production's version and scores stand, nothing is
    saved. The decision names the version."""
    production = production or {}
    version = str(production.get("version") or "none")
    score = production.get("score")
    result.status, result.estimator = trainer.UNCHANGED, None
    if isinstance(score, int | float):
        result.score = float(score)
        result.passed = passes(result.score, result.threshold)
    for key in ("baseline", "lift", "params"):
        if production.get(key) is not None:
            setattr(result, key, production[key])
    fingerprint = (result.data_fingerprint or "")[:12]
    logger.info("%s unchanged: same data and parameters as production %s (fingerprint %s)",
                result.name, version, fingerprint)
    return Decision(version, False, f"unchanged: same data and parameters as production "
                                    f"{version} (data fingerprint {fingerprint}); no new "
                                    f"version", score if isinstance(score, int | float)
                    else None)


class Comparison(NamedTuple):
    """The gate's evidence on a candidate's holdout (see `compare_on_holdout`)."""

    production: float | None
    interval: Interval | None = None
    worst: SliceGap | None = None
    keys: np.ndarray | None = None  # the holdout rows' keys (`predictions.row_keys`)
    reused: int = 0  # rows whose production prediction was kept from its own holdout


def compare_on_holdout(services: Services, result: trainer.TrainResult,
                       tables: Mapping[str, pd.DataFrame]) -> Comparison:
    """Production's score on the candidate's holdout (not its old number; None if nothing
    serves), and, with one prediction by each model, the paired bootstrap interval of
    candidate minus production and the spec's worst slice (None when not computed).
    Production's predictions it kept from its own holdout are reused by row
    (`predictions.py`); only the other rows are predicted."""
    settings = services.settings
    spec = specs.get_spec(result.name)
    labelled, _ = trainer.labelled_frame(spec, tables[spec.table])
    tcol = schema.time_column(spec.table)
    holdout = labelled[labelled[tcol] >= pd.Timestamp(result.holdout_start)]
    features = list(spec.features)
    X = holdout[features]
    keys = predictions.row_keys(X)
    served = services.store.load_serving(result.name,
                                         on_alert=services.alerts.callback(result.name))
    if served is None:
        return Comparison(None, keys=keys)
    try:
        y = trainer.target_values(spec, holdout[spec.target])
        memo = predictions.recall(services.store, result.name, served[1]["version"], features)
        production, reused = predictions.predicted(
            memo, keys, lambda rows: trainer.decision_values(spec, served[0], X[rows]))
        score = round(get_metric(spec.metric).score(y, production), 6)
    except Exception as exc:  # production cannot score today's data: the candidate wins
        logger.warning("production %s cannot score the new holdout: %s", result.name, exc)
        return Comparison(0.0, keys=keys)
    logger.debug("%s: production's predictions reused for %d of %d holdout rows",
                 result.name, reused, len(keys))
    if result.estimator is None:
        return Comparison(score, keys=keys, reused=reused)
    try:
        candidate = result.holdout_values  # predicted by the fit, on these very rows
        if candidate is None or len(candidate) != len(X):
            candidate = trainer.decision_values(spec, result.estimator, X)
        interval = None
        if settings.PROMOTION_BOOTSTRAP_RESAMPLES:
            interval = paired_bootstrap(spec.metric, y, candidate, production,
                                        resamples=settings.PROMOTION_BOOTSTRAP_RESAMPLES,
                                        seed=settings.PROMOTION_BOOTSTRAP_SEED,
                                        confidence=settings.PROMOTION_CONFIDENCE)
        worst = worst_slice(spec.metric, y, candidate, production,
                            {c: holdout[c].to_numpy() for c in spec.slices},
                            min_rows=settings.PROMOTION_MIN_SLICE_ROWS)
    except Exception as exc:  # no evidence is never a reason to fail the run
        logger.warning("%s: no interval or slices for the gate: %s", result.name, exc)
        return Comparison(score, keys=keys, reused=reused)
    return Comparison(score, interval, worst, keys, reused)
