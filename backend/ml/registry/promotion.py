"""The promotion gate: whether a new version should replace production, and why.

The rule (README, "How it decides"), with both scores taken on the candidate's holdout,
the newest rows, production re-scored there:
  - nothing in production: the first successful fit is promoted, flagged when it is below
    its threshold (serving a weak model beats serving none);
  - a candidate at or above its threshold is promoted when it scores at least production
    minus the tolerance;
  - a candidate below its threshold is promoted, flagged, only when production is below
    the threshold too and the candidate beats it by more than the tolerance (serve the
    best there is);
  - anything else is kept as a candidate, a candidate worse than production always.

Not done here: scoring production on the candidate's holdout (the run has the data and
passes the score in), and the alert a flagged promotion raises (`runs/promote.py`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True)
class Decision:
    """What the gate decided for one new version of a run."""

    version: str
    promoted: bool
    decision: str  # why, for people
    production_score_on_holdout: float | None  # None: nothing in production
    below_threshold: bool = False  # promoted although under its threshold: the best there is

    def as_detail(self) -> dict[str, Any]:
        return asdict(self)


class GateVerdict(NamedTuple):
    promote: bool
    reason: str
    below_threshold: bool  # promoted although the candidate is under its threshold


def promotion_decision(*, candidate_score: float, candidate_passed: bool,
                       production_score_on_same_holdout: float | None, tolerance: float,
                       threshold: float | None = None) -> GateVerdict:
    """Whether a new version should replace production, why, and whether it is promoted
    below its threshold (see the module docstring for the rule).

    `production_score_on_same_holdout` is None only when there is no production version.
    Whether production is below the threshold is judged by that same score: its stored
    holdout score is from older rows.
    """
    below = "below" if threshold is None else f"below its threshold {threshold:.4f}"
    if production_score_on_same_holdout is None:
        if candidate_passed:
            return GateVerdict(True, "first version: nothing in production to compare with",
                               False)
        return GateVerdict(True, f"first version, promoted although {candidate_score:.4f} is "
                                 f"{below}: nothing in production to compare with", True)
    if math.isnan(candidate_score):
        return GateVerdict(False, f"kept as candidate: score {candidate_score:.4f} is {below}",
                           False)
    prod = production_score_on_same_holdout
    versus = (f"score {candidate_score:.4f} vs production {prod:.4f} on the same holdout "
              f"(tolerance {tolerance:g})")
    if candidate_passed:
        if candidate_score >= prod - tolerance:
            return GateVerdict(True, f"promoted: {versus}", False)
        return GateVerdict(False, f"kept as candidate: worse than production, {versus}", False)
    if threshold is None or prod >= threshold:
        return GateVerdict(False, f"kept as candidate: score {candidate_score:.4f} is {below}",
                           False)
    if candidate_score > prod + tolerance:
        return GateVerdict(True, f"promoted although {candidate_score:.4f} is {below}: "
                                 f"production is below it too and the candidate beats it, "
                                 f"{versus}", True)
    if candidate_score < prod - tolerance:
        return GateVerdict(False, f"kept as candidate: worse than production, {versus}", False)
    return GateVerdict(False, f"kept as candidate: {below}, like production, and not better "
                              f"than it by more than the tolerance, {versus}", False)
