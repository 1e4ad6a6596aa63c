"""Drift scenarios: named changes to the world that a model trained on history has not seen.

Each one moves a context variable into a range the history never saw, where the outcome
behaves differently; retraining on data that includes those rows recovers the hurt model.
The generators that a scenario changes check for it by name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    """A drift scenario: what changes in the world, and which models it hurts."""

    name: str
    description: str
    hurts: tuple[str, ...]


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("monsoon_disruption", "extreme rainfall (80-250 mm) waterlogs tracks and roads; "
             "delays climb steeply past the drains' 60 mm capacity", ("delay_prediction",)),
    Scenario("fuel_price_shock", "diesel jumps from about 92 to about 150 INR/l; freight "
             "tariffs follow through their fuel clauses", ("cost_prediction",)),
    Scenario("supplier_decline", "most road transporters cut corners: they self-report "
             "near-perfect on-time rates (0.98-1.00, above anything on record) while their "
             "real service collapses; delays grow and their customers turn dissatisfied",
             ("customer_satisfaction", "delay_prediction")),
    Scenario("sensor_recalibration", "vibration sensors are re-fitted and now report in/s "
             "instead of mm/s", ("predictive_maintenance",)),
]}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown drift scenario {name!r}; scenarios are "
                         f"{', '.join(sorted(SCENARIOS))}") from None
