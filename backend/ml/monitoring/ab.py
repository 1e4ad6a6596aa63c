"""A/B in the check: the newest candidate newer than production is scored on the same
fresh labelled rows as production; one that beats it on `wins_needed` consecutive checks
is promoted (audit action "ab_promote"). A candidate that cannot be loaded or scored
simply loses; nothing here retrains.
"""

from __future__ import annotations

import logging

import pandas as pd

from backend.ml.fleet.specs import ModelSpec
from backend.ml.monitoring.state import ABState, ModelMonitorState
from backend.ml.monitoring.verdict import CheckVerdict
from backend.ml.registry.store import ModelStore
from backend.ml.training import trainer

logger = logging.getLogger(__name__)


def ab_test(store: ModelStore, spec: ModelSpec, fresh: pd.DataFrame, live: float,
            model_state: ModelMonitorState, result: CheckVerdict, *, wins_needed: int) -> None:
    """Score the newest candidate beside production's `live` score; `model_state.ab`
    counts its consecutive wins and `result.ab` records this check's comparison."""
    name = spec.name
    candidates = [v for v in store.versions(name) if v.get("state") == "candidate"]
    production = store.aliases(name)["production"]
    newest = candidates[0] if candidates else None
    if newest is None or production is None or newest["version"] < production:
        model_state.ab = None
        return
    try:
        estimator, _ = store.load(name, newest["version"])
        score = round(trainer.evaluate(spec, estimator, fresh), 6)
    except Exception as exc:  # an unloadable candidate simply loses
        logger.warning("A/B: %s %s cannot be scored: %s", name, newest["version"], exc)
        return
    ab = model_state.ab
    wins = ab.wins + 1 if ab is not None and ab.version == newest["version"] else 1
    wins = wins if score > live else 0
    model_state.ab = ABState(version=newest["version"], wins=wins)
    result.ab = {"candidate": newest["version"], "score": score, "wins": wins}
    if wins >= wins_needed:
        store.promote(name, newest["version"], actor="scheduler", action="ab_promote",
                      reason=f"A/B: beat production on {wins} consecutive checks "
                             f"({score:.4f} vs {live:.4f} on fresh rows)")
        model_state.ab = None
        result.ab["promoted"] = True
