"""The dispatch_decisions table: each yard shift's situation, action and its payoff."""

from __future__ import annotations

import numpy as np
import pandas as pd

from backend.ml.data.synthetic.world import DayContext, pick

YARDS = ["Bokaro Main Yard", "CMO Stockyard Bokaro", "Coil Yard", "Plate Mill Yard"]
ACTIONS = ["RAIL_PRIORITY", "ROAD_PRIORITY", "SPLIT", "HOLD", "EXPEDITE"]


def make_dispatch(ctx: DayContext, rng: np.random.Generator) -> pd.DataFrame:
    per_day = len(YARDS) * 3
    n = len(ctx.days) * per_day
    di = np.repeat(np.arange(len(ctx.days)), per_day)
    yard = np.tile(np.repeat(YARDS, 3), len(ctx.days))
    shift = np.tile(["A", "B", "C"], len(ctx.days) * len(YARDS))
    rakes = rng.integers(0, 9, n)
    trucks = rng.integers(0, 61, n)
    surge = rng.uniform(0.7, 1.6, n).round(2)
    closure = (rng.random(n) < 0.04).astype(int)
    alert = ((ctx.rain[di] > 25) | (rng.random(n) < 0.03)).astype(int)
    stock = rng.uniform(20, 100, n).round(1)
    pending = rng.poisson(30 * surge)
    action_taken = rng.choice(ACTIONS, n)

    def throughput(action: np.ndarray) -> np.ndarray:
        rail_cap = rakes * 3000.0 * (1 - 0.6 * closure)
        road_cap = trucks * 25.0 * (1 - 0.5 * alert)
        demand = pending * 120.0 * surge
        stock_f = stock / 100
        share = {"RAIL_PRIORITY": (0.9, 0.3), "ROAD_PRIORITY": (0.3, 0.95),
                 "SPLIT": (0.65, 0.65), "HOLD": (0.15, 0.15), "EXPEDITE": (0.8, 0.8)}
        out = np.zeros(len(action))
        for name, (rs, ts) in share.items():
            sel = action == name
            cap = (rail_cap * rs + road_cap * ts)[sel]
            out[sel] = np.minimum(cap, demand[sel] * 1.4) * stock_f[sel] ** 0.5
        return out

    value = {a: throughput(np.full(n, a)) - {"EXPEDITE": 2500.0, "HOLD": -1500.0}.get(a, 0.0)
             for a in ACTIONS}
    best = np.array(ACTIONS)[np.argmax(np.column_stack([value[a] for a in ACTIONS]), axis=1)]
    actual = throughput(action_taken)
    noisy = actual * rng.lognormal(0, 0.3, n) + rng.normal(0, 600, n)
    return pd.DataFrame({
        "decided_at": pd.to_datetime(ctx.days.to_numpy()[di]
                                     + np.tile([6, 14, 22], n // 3).astype("timedelta64[h]")),
        "yard": yard, "shift": shift, "rakes_available": rakes, "trucks_available": trucks,
        "demand_surge": surge, "yard_closure": closure, "weather_alert": alert,
        "stock_level_pct": stock, "pending_orders": pending, "action_taken": action_taken,
        "throughput_tonnes": np.maximum(noisy, 0).round(1),
        "dispatch_cost": (actual * 0.9 + rng.normal(0, 800, n)).round(0),
        "best_action": pick(rng, best, ACTIONS, 0.25),
    })
