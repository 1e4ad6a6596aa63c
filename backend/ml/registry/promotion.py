"""The promotion gate: whether a new version should replace production, and why.

Not done here: scoring production on the candidate's holdout (the run has the data and
passes the score in).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Decision:
    """What the gate decided for one new version of a run."""

    version: str
    promoted: bool
    decision: str  # why, for people
    production_score_on_holdout: float | None  # None: nothing in production

    def as_detail(self) -> dict[str, Any]:
        return asdict(self)


def promotion_decision(*, candidate_score: float, candidate_passed: bool,
                       production_score_on_same_holdout: float | None, tolerance: float,
                       threshold: float | None = None) -> tuple[bool, str]:
    """Whether a new version should replace production, and why.

    `production_score_on_same_holdout` is None only when there is no production version:
    then the first successful fit is promoted even below its threshold, since serving a
    weak model beats serving none (the reason says so, and the run reports it).
    """
    below = "below" if threshold is None else f"below its threshold {threshold:.4f}"
    if production_score_on_same_holdout is None:
        return True, ("first version: nothing in production to compare with" if candidate_passed
                      else f"first version, promoted although {candidate_score:.4f} is {below}: "
                      "nothing in production to compare with")
    if math.isnan(candidate_score) or not candidate_passed:
        return False, f"kept as candidate: score {candidate_score:.4f} is {below}"
    prod = production_score_on_same_holdout
    versus = (f"score {candidate_score:.4f} vs production {prod:.4f} on the same holdout "
              f"(tolerance {tolerance:g})")
    if candidate_score >= prod - tolerance:
        return True, f"promoted: {versus}"
    return False, f"kept as candidate: worse than production, {versus}"
