"""The daily_demand table: tonnes ordered per material, region and day."""

from __future__ import annotations

import numpy as np
import pandas as pd

from backend.ml.data.synthetic.world import DESTINATIONS, MATERIALS, DayContext


def make_daily_demand(ctx: DayContext, rng: np.random.Generator,
                      world_seed: int) -> pd.DataFrame:
    base_rng = np.random.default_rng([world_seed, 1])
    regions = list(DESTINATIONS)
    base = base_rng.gamma(3.0, 120.0, (len(MATERIALS), len(regions)))
    n_days = len(ctx.days)
    season = 1 + 0.15 * np.sin(2 * np.pi * ctx.days.day_of_year.to_numpy() / 365 + 1.0)
    dow = np.where(ctx.days.day_of_week.to_numpy() == 6, 0.55, 1.0)
    level = season * dow * (1 + 0.3 * ctx.festival) * (1 - 0.15 * ctx.monsoon)
    price = np.clip(100 + np.cumsum(rng.normal(0, 0.4, n_days)), 92, 108)
    rows = []
    for m in range(len(MATERIALS)):
        for r in range(len(regions)):
            ar = np.zeros(n_days)
            eps = rng.normal(0, 0.1, n_days)
            for i in range(1, n_days):
                ar[i] = 0.8 * ar[i - 1] + eps[i]
            tonnes = base[m, r] * level * (1 - 0.4 * (price - 100) / 100) * np.exp(ar)
            tonnes = tonnes * rng.lognormal(0, 0.07, n_days)
            rows.append(pd.DataFrame({
                "demand_date": ctx.days, "material": MATERIALS[m], "region": regions[r],
                "is_festival": ctx.festival, "is_monsoon": ctx.monsoon,
                "price_index": price.round(2), "tonnes_ordered": tonnes.round(1)}))
    return pd.concat(rows, ignore_index=True).sort_values("demand_date", kind="stable")
