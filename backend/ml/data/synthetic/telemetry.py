"""The equipment_telemetry table: sensor readings and the failures they foreshadow."""

from __future__ import annotations

import numpy as np
import pandas as pd

from backend.ml.data.synthetic.world import DayContext, World


def make_telemetry(ctx: DayContext, world: World,
                   rng: np.random.Generator) -> pd.DataFrame:
    eq = world.equipment
    days = ctx.days[::3]  # every unit reports every third day
    n = len(days) * len(eq)
    ei = np.tile(np.arange(len(eq)), len(days))
    when = np.repeat(days.to_numpy(), len(eq)) + rng.integers(0, 24, n).astype("timedelta64[h]")
    wear = eq.wear.to_numpy()[ei]
    age = eq.age_years.to_numpy()[ei]
    hours = rng.uniform(0, 3000, n)
    load = rng.uniform(30, 100, n)
    vib = (1.0 + 0.0018 * hours * wear + 0.05 * age + 0.02 * load) * rng.lognormal(0, 0.2, n)
    temp = 45 + 0.01 * hours + 0.25 * load + rng.normal(0, 4, n)
    oil = np.clip(1 - hours / 4000 * wear + rng.normal(0, 0.08, n), 0.05, 1)
    risk = (0.9 * vib - 0.5 * 6.0 + 0.04 * (temp - 70) + 2.0 * (0.5 - oil) + 0.03 * age
            + rng.logistic(0, 1.8, n))
    failure = (risk > 1.8).astype(int)
    if ctx.scenario is not None and ctx.scenario.name == "sensor_recalibration":
        vib = vib / 25.4  # the new sensors report in/s
    return pd.DataFrame({
        "recorded_at": pd.to_datetime(when), "equipment_id": eq.equipment_id.to_numpy()[ei],
        "equipment_type": eq.equipment_type.to_numpy()[ei], "age_years": age,
        "hours_since_service": hours.round(0), "vibration_mm_s": vib.round(4),
        "temperature_c": temp.round(1), "oil_quality": oil.round(3), "load_pct": load.round(1),
        "failure_within_30d": failure,
    }).sort_values("recorded_at", kind="stable")
