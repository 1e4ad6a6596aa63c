"""The retraining policies a backtest compares, and what each does on one simulated day.

Every policy runs the real check once a day, so every policy is measured the same way (the
check's live score on fresh labelled rows). They differ in what trains:

  nightly      the service's daily training run every day (trigger "daily"), and the check
               without its retrains
  on_degrade   the check with its retrains of degraded models
  on_estimate  on_degrade, and the check also retrains on an estimated drop (a model with
               too few labelled fresh rows whose estimate's whole interval is under its
               threshold): the service with ESTIMATE_ACTION=retrain
  never        the check only; nothing is ever retrained after day 0
  nightly_on_degrade
               both: the daily run every night and the check with its retrains, which is
               what the service itself does by default (asked for by name; not among the
               command's default four)

With labels that arrive days late (LABEL_SETTLEMENT_DAYS), each night's version was
trained on every row whose label was known: it is scored on the rows labelled since its
training (its own window's last days, still pending then), so the check comes after a day
of serving (`run_day`). A day whose check has too few of them only estimates; the backtest
reports those model-days as "estimated only", never as live scores.

A policy is a setting of the service, not code of its own: `policy_settings` gives each
policy's world its settings, `run_day` calls the runner and the check as the scheduler does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from backend.ml.backtest.world import World
from backend.ml.config import Settings


class Policy(StrEnum):
    NIGHTLY = "nightly"
    ON_DEGRADE = "on_degrade"
    ON_ESTIMATE = "on_estimate"
    NEVER = "never"
    NIGHTLY_ON_DEGRADE = "nightly_on_degrade"


POLICY_NAMES = tuple(p.value for p in Policy)
# The check's verdicts from an estimate, not labels (monitoring/verdict.py, by value).
ESTIMATED_VERDICTS = ("estimated", "estimated_below_threshold")
# The check retrains what is degraded
RETRAINING = (Policy.ON_DEGRADE, Policy.ON_ESTIMATE, Policy.NIGHTLY_ON_DEGRADE)
DAILY_RUNS = (Policy.NIGHTLY, Policy.NIGHTLY_ON_DEGRADE)  # the daily run trains every night


def parse_policies(text: str) -> list[Policy]:
    """Policies from a comma list; ValueError naming the unknown one and the valid names."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise ValueError(f"--policies needs at least one of {', '.join(POLICY_NAMES)}")
    unknown = [n for n in names if n not in POLICY_NAMES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; policies are "
                         f"{', '.join(POLICY_NAMES)}")
    return list(dict.fromkeys(Policy(n) for n in names))


def policy_settings(policy: Policy, base: Settings) -> Settings:
    """The settings `policy`'s world runs with: the service's, and for on_estimate the
    check allowed to retrain on an estimated drop."""
    if policy is Policy.ON_ESTIMATE:
        return base.model_copy(update={"ESTIMATE_ACTION": "retrain"})
    return base


@dataclass
class DayOutcome:
    """What one policy's day produced: the check's entry and the fits it took."""

    check: dict[str, Any]
    fits: int = 0
    runs: list[str] = field(default_factory=list)


def run_day(policy: Policy, world: World, models: list[str] | None) -> DayOutcome:
    """One simulated day of `policy` in `world`, whose rows for the day are in and whose
    clock is at the check hour: the check, then (for the policies that train every night)
    the daily run. In that order, each night's version serves a whole day before the next
    check scores it, on the labels that came in since its training: what the service's last
    hourly check before its next daily run sees. Run before the check (as DAILY_TRAINING_TIME
    is), the version would be checked hours old, with a few labels since and only an
    estimate every day."""
    fits, runs = 0, []
    entry = world.monitor(retrain=policy in RETRAINING).run_check()
    for result in entry["models"].values():
        retrain = result.get("retrain") or {}
        attempts = retrain.get("attempts") or []
        fits += len(attempts)
        runs += [str(a["run_id"]) for a in attempts if a.get("run_id")]
    if policy in DAILY_RUNS:
        summary = world.runner.run(trigger="daily", models=models, actor="scheduler")
        fits += int(summary["models_trained"]) - len(summary.get("unchanged", []))
        runs.append(str(summary["run_id"]))
    return DayOutcome(entry, fits, runs)
