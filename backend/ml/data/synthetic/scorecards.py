"""The supplier_scorecards table: each transporter's monthly record and next-quarter rating."""

from __future__ import annotations

import numpy as np
import pandas as pd

from backend.ml.data import schema
from backend.ml.data.labels import LABELLED_AT
from backend.ml.data.synthetic.world import DayContext, World


def make_scorecards(ctx: DayContext, world: World, rng: np.random.Generator) -> pd.DataFrame:
    months = pd.date_range(ctx.days[0], ctx.days[-1], freq="MS")
    if len(months) == 0:
        return pd.DataFrame(columns=[c.name for c in schema.supplier_scorecards.columns
                                     if c.name not in ("id", LABELLED_AT)])
    tr = world.transporters
    frames = []
    for month in months:
        k = month.year * 12 + month.month
        q = np.clip(tr.quality.to_numpy() + 0.12 * np.sin(k / 4 + tr.phase.to_numpy()), 0, 1)
        q_next = np.clip(tr.quality.to_numpy() + 0.12 * np.sin((k + 3) / 4 + tr.phase.to_numpy())
                         + rng.normal(0, 0.04, len(tr)), 0, 1)
        rating = np.select([q_next > 0.62, q_next > 0.3], ["A", "B"], "C").astype(object)
        frames.append(pd.DataFrame({
            "month": month, "transporter": tr.transporter.to_numpy(),
            "fleet_size": tr.fleet.to_numpy(),
            "shipments_handled": rng.poisson(40 + tr.fleet.to_numpy() / 2),
            "on_time_rate": np.clip(0.7 + 0.28 * q + rng.normal(0, 0.03, len(tr)), 0, 1).round(3),
            "damage_rate": np.clip(0.05 * (1 - q) + rng.normal(0, 0.006, len(tr)), 0, 1).round(4),
            "price_deviation": (rng.normal(0, 0.04, len(tr)) - 0.02 * q).round(4),
            "disputes": rng.poisson(3.0 * (1 - q)),
            "next_quarter_rating": rating,
        }))
    return pd.concat(frames, ignore_index=True)
