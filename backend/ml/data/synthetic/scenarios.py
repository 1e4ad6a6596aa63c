"""Drift scenarios: named changes to the world that a model trained on history has not seen.

Each of the first four moves a context variable into a range the history never saw, where
the outcome behaves differently; retraining on data that includes those rows recovers the
models it targets. `port_export_push` is the other kind, covariate shift: the mix of inputs
moves (more long hauls to the ports) while every outcome follows from its inputs by the same
rules, so it is built to hurt no model; it is what performance estimation without labels
(backend/ml/monitoring/estimate.py) is meant to see through.

The generators that a scenario changes check for it by name, and draw what it
changes from the context's own scenario stream: the same days with and without a scenario
hold the same shipments, so its effect on each model is measured on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    """A drift scenario: what changes in the world, the models it is built to break (their
    outcome rule or inputs change; a retrain on data with the new rows recovers them), and
    every model it hurts, as measured by tests/ml/test_drift_matrix.py (the README's table).
    """

    name: str
    description: str
    targets: tuple[str, ...]
    hurts: tuple[str, ...]


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("monsoon_disruption", "extreme rainfall (80-250 mm) waterlogs tracks and roads; "
             "delays climb steeply past the drains' 60 mm capacity; rain beyond anything on "
             "record also misleads the anomaly detector",
             ("delay_prediction",),
             ("delay_prediction", "anomaly_detection")),
    Scenario("fuel_price_shock", "diesel jumps from about 92 to about 150 INR/l; freight "
             "tariffs follow through their fuel clauses, and road against rail changes which "
             "option is cheapest",
             ("cost_prediction",), ("cost_prediction", "cost_optimization")),
    Scenario("supplier_decline", "most road transporters cut corners: they self-report "
             "near-perfect on-time rates (0.98-1.00, above anything on record) while their "
             "real service collapses; delays and damage grow and their customers turn "
             "dissatisfied",
             ("customer_satisfaction", "delay_prediction"),
             ("delay_prediction", "quality_prediction", "risk_assessment",
              "customer_satisfaction")),
    Scenario("sensor_recalibration", "vibration sensors are re-fitted and now report in/s "
             "instead of mm/s", ("predictive_maintenance",), ("predictive_maintenance",)),
    Scenario("port_export_push", "an export contract sends a quarter of the consignments to the "
             "ports (Visakhapatnam, Haldia, Kolkata): longer hauls and more rakes, within "
             "the ranges on record; the outcome rules do not change", (), ()),
]}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown drift scenario {name!r}; scenarios are "
                         f"{', '.join(sorted(SCENARIOS))}") from None
