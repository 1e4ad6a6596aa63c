"""The plant's fixed world and each day's conditions, shared by every table.

The fixed entities (customers, transporters, equipment) come from the seed alone; the day
context (rain, diesel price, festivals, monsoon) from the seed and the days, so every table
generated for the same days sees the same weather and calendar.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from backend.ml.data.synthetic.scenarios import Scenario

MATERIALS = ["HR_COIL", "CR_COIL", "PLATE", "WIRE_ROD", "TMT_BAR", "BILLET", "PIG_IRON"]
# destination: (route code, road km from Bokaro, has a rail siding)
DESTINATIONS: dict[str, tuple[str, float, bool]] = {
    "Kolkata": ("KOL", 320, True), "Haldia": ("HLD", 390, True),
    "Durgapur": ("DGR", 165, True), "Asansol": ("ASN", 120, True),
    "Patna": ("PNBE", 330, True), "Ranchi": ("RNC", 115, False),
    "Dhanbad": ("DHN", 50, False), "Jamshedpur": ("TATA", 160, True),
    "Rourkela": ("ROU", 330, True), "Visakhapatnam": ("VSKP", 870, True),
}
SEGMENTS = ["CONSTRUCTION", "AUTOMOTIVE", "INFRASTRUCTURE", "FABRICATION", "RAILWAYS",
            "EXPORT", "DEALER"]
EQUIPMENT_TYPES = ["LOCOMOTIVE", "WAGON", "EOT_CRANE", "CONVEYOR"]
N_CUSTOMERS, N_TRANSPORTERS, N_EQUIPMENT = 40, 40, 120
SHIPMENTS_PER_DAY = 145


@dataclass
class World:
    """The fixed entities of the plant's business, drawn from the seed alone."""

    customers: pd.DataFrame
    transporters: pd.DataFrame
    equipment: pd.DataFrame


def make_world(seed: int) -> World:
    rng = np.random.default_rng([seed, 0])
    dests = list(DESTINATIONS)
    customers = pd.DataFrame({
        "customer": [f"C{i:03d}" for i in range(1, N_CUSTOMERS + 1)],
        "segment": rng.choice(SEGMENTS, N_CUSTOMERS),
        "home": rng.choice(dests, N_CUSTOMERS),
        "primary": rng.choice(MATERIALS, N_CUSTOMERS),
        "secondary": rng.choice(MATERIALS, N_CUSTOMERS),
        "weight": rng.gamma(2.0, 1.0, N_CUSTOMERS),
    })
    transporters = pd.DataFrame({
        "transporter": [f"TR{i:02d}" for i in range(1, N_TRANSPORTERS + 1)],
        "quality": rng.uniform(0.0, 1.0, N_TRANSPORTERS),
        "fleet": rng.integers(20, 160, N_TRANSPORTERS),
        "phase": rng.uniform(0, 2 * np.pi, N_TRANSPORTERS),
    })
    etype = rng.choice(EQUIPMENT_TYPES, N_EQUIPMENT, p=[0.25, 0.35, 0.2, 0.2])
    equipment = pd.DataFrame({
        "equipment_id": [f"{t[:4]}-{i:03d}" for i, t in enumerate(etype, 1)],
        "equipment_type": etype,
        "age_years": rng.uniform(1, 30, N_EQUIPMENT).round(1),
        "wear": rng.uniform(0.6, 1.4, N_EQUIPMENT),
    })
    return World(customers, transporters, equipment)


def _festival(days: pd.DatetimeIndex) -> np.ndarray:
    """Holi (early March), Durga Puja and Diwali (October-November), Chhath (November)."""
    doy = days.day_of_year.to_numpy()
    return np.asarray((((doy >= 66) & (doy <= 69)) | ((doy >= 283) & (doy <= 292))
                       | ((doy >= 305) & (doy <= 309)) | ((doy >= 312) & (doy <= 315))),
                      dtype=int)


def _monsoon(days: pd.DatetimeIndex) -> np.ndarray:
    return np.isin(days.month, [6, 7, 8, 9]).astype(int)


@dataclass
class DayContext:
    """Per-day conditions shared by every table."""

    days: pd.DatetimeIndex
    rain: np.ndarray
    fuel_price: np.ndarray
    festival: np.ndarray
    monsoon: np.ndarray
    scenario: Scenario | None = None
    # What a scenario draws comes from its own stream, so the calm world's stream is drawn
    # the same with or without it: a drifted world is the calm one plus the scenario's
    # change, and "before and after" compare the same shipments.
    scenario_rng: np.random.Generator | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def drift_draws(self) -> np.random.Generator:
        if self.scenario_rng is None:
            raise ValueError("a scenario's draws need the context's scenario_rng")
        return self.scenario_rng


def day_context(days: pd.DatetimeIndex, rng: np.random.Generator,
                scenario: Scenario | None,
                scenario_rng: np.random.Generator | None = None) -> DayContext:
    n = len(days)
    monsoon = _monsoon(days)
    wet = rng.random(n) < np.where(monsoon == 1, 0.6, 0.08)
    rain = np.where(wet, rng.gamma(1.5, np.where(monsoon == 1, 12.0, 5.0)), 0.0)
    rain = np.minimum(rain, 58.0)  # the history never overtops the drains
    doy = days.day_of_year.to_numpy()
    ar = np.zeros(n)
    shocks = rng.normal(0, 0.35, n)
    for i in range(1, n):
        ar[i] = 0.97 * ar[i - 1] + shocks[i]
    fuel = np.clip(92 + 2.5 * np.sin(2 * np.pi * doy / 365) + ar, 86, 98)
    ctx = DayContext(days, rain, fuel, _festival(days), monsoon, scenario, scenario_rng)
    if scenario is not None and scenario.name == "monsoon_disruption":
        ctx.rain = 80 + ctx.drift_draws().gamma(2.0, 30.0, n)
        ctx.monsoon = np.ones(n, dtype=int)
    if scenario is not None and scenario.name == "fuel_price_shock":
        ctx.fuel_price = 150 + ctx.drift_draws().normal(0, 2.0, n)
    return ctx


def pick(rng: np.random.Generator, labels: np.ndarray, options: list[str],
         flip: float) -> np.ndarray:
    """Keep the rule's label, except a share `flip` replaced by a random option."""
    out = labels.astype(object).copy()
    mask = rng.random(len(out)) < flip
    out[mask] = rng.choice(options, int(mask.sum()))
    return out
