"""Synthetic logistics data for the Bokaro plant, with real structure.

Every outcome is a function of its context plus noise (the functions are below, one per
outcome), so a model can learn it and a later scenario can break it. Generation is
vectorised numpy and deterministic: the fixed world (customers, transporters, equipment)
comes from the seed alone, each day's events from the seed and the day. `simulate`
appends days after the newest row, optionally under a drift scenario that moves a
context variable into a range the history never saw, where the outcome behaves
differently; retraining on data that includes those rows recovers the hurt model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from backend.ml.data import loading, schema

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
# Route 1 is the direct road (short, traffic-prone); 2 the highway (rain-proof);
# 3 the bypass (longest, avoids festival towns).
ROUTE_KM_FACTOR = np.array([1.0, 1.08, 1.15])
RAIL_WAGON_FOR = {"HR_COIL": "BCN", "CR_COIL": "BCN", "WIRE_ROD": "BCN", "PLATE": "BOST",
                  "TMT_BAR": "BRN", "BILLET": "BRN", "PIG_IRON": "BOXN"}
RAIL_WAGONS = ["BOXN", "BCN", "BOBRN", "BRN", "BOST"]
ROAD_VEHICLES = ["TRUCK_16T", "TRAILER_28T"]
PREFERRED_LP = {"HR_COIL": "LP1", "CR_COIL": "LP1", "PLATE": "LP2", "TMT_BAR": "LP2",
                "WIRE_ROD": "LP3", "BILLET": "LP3", "PIG_IRON": "WT"}
YARDS = ["Bokaro Main Yard", "CMO Stockyard Bokaro", "Coil Yard", "Plate Mill Yard"]
ACTIONS = ["RAIL_PRIORITY", "ROAD_PRIORITY", "SPLIT", "HOLD", "EXPEDITE"]
EQUIPMENT_TYPES = ["LOCOMOTIVE", "WAGON", "EOT_CRANE", "CONVEYOR"]
N_CUSTOMERS, N_TRANSPORTERS, N_EQUIPMENT = 40, 40, 120
SHIPMENTS_PER_DAY = 145
RAIL_TRANSPORTER = "Indian Railways (ECR)"


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
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def _day_context(days: pd.DatetimeIndex, rng: np.random.Generator,
                 scenario: Scenario | None) -> DayContext:
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
    if scenario is not None and scenario.name == "monsoon_disruption":
        rain = 80 + rng.gamma(2.0, 30.0, n)
        monsoon = np.ones(n, dtype=int)
    if scenario is not None and scenario.name == "fuel_price_shock":
        fuel = 150 + rng.normal(0, 2.0, n)
    return DayContext(days, rain, fuel, _festival(days), monsoon, scenario)


def _pick(rng: np.random.Generator, labels: np.ndarray, options: list[str],
          flip: float) -> np.ndarray:
    """Keep the rule's label, except a share `flip` replaced by a random option."""
    out = labels.astype(object).copy()
    mask = rng.random(len(out)) < flip
    out[mask] = rng.choice(options, int(mask.sum()))
    return out


def _shipments(ctx: DayContext, world: World, rng: np.random.Generator,
               per_day: int) -> pd.DataFrame:
    counts = rng.poisson(per_day * np.where(ctx.days.day_of_week == 6, 0.7, 1.05), len(ctx.days))
    day_idx = np.repeat(np.arange(len(ctx.days)), counts)
    n = len(day_idx)
    cust = world.customers
    ci = rng.choice(len(cust), n, p=(cust.weight / cust.weight.sum()).to_numpy())
    customer = cust.customer.to_numpy()[ci]
    segment = cust.segment.to_numpy()[ci]
    roll = rng.random(n)
    material = np.where(roll < 0.8, cust.primary.to_numpy()[ci],
                        np.where(roll < 0.92, cust.secondary.to_numpy()[ci],
                                 rng.choice(MATERIALS, n)))
    dest_names = np.array(list(DESTINATIONS))
    destination = np.where(rng.random(n) < 0.7, cust.home.to_numpy()[ci],
                           rng.choice(dest_names, n))
    info = pd.DataFrame.from_dict(DESTINATIONS, orient="index",
                                  columns=["code", "km", "siding"]).loc[destination]
    base_km = info.km.to_numpy(dtype=float)
    siding = info.siding.to_numpy(dtype=bool)
    route_no = rng.choice(3, n, p=[0.6, 0.25, 0.15])
    route = np.char.add(np.char.add(info.code.to_numpy().astype(str), "-R"),
                        (route_no + 1).astype(str))
    distance = base_km * ROUTE_KM_FACTOR[route_no] * rng.uniform(0.97, 1.03, n)
    rail = (rng.random(n) < np.clip(0.15 + base_km / 700, 0, 0.85)) & siding
    mode = np.where(rail, "RAIL", "ROAD")
    tonnage = np.where(rail, rng.uniform(2200, 3900, n), rng.uniform(9, 30, n)).round(1)
    planned_vehicle = np.where(
        rail, pd.Series(material).map(RAIL_WAGON_FOR).to_numpy(),
        np.where(tonnage > 20, "TRAILER_28T", "TRUCK_16T"))
    pig_bottom = rail & (material == "PIG_IRON") & np.isin(destination, ["Durgapur", "Haldia"])
    planned_vehicle = np.where(pig_bottom, "BOBRN", planned_vehicle)
    vehicle = np.where(rail, _pick(rng, planned_vehicle, RAIL_WAGONS, 0.25),
                       _pick(rng, planned_vehicle, ROAD_VEHICLES, 0.34))
    hour = rng.choice(24, n, p=_hour_weights())
    minute = rng.integers(0, 60, n)
    dispatched = (ctx.days.to_numpy()[day_idx] + hour.astype("timedelta64[h]")
                  + minute.astype("timedelta64[m]"))
    shift = np.where((hour >= 6) & (hour < 14), "A", np.where((hour >= 14) & (hour < 22),
                                                               "B", "C"))
    loading_point = np.where(rail & (material == "PIG_IRON"), "WT",
                             rng.choice(["LP1", "LP2", "LP3"], n))
    origin = np.where(rng.random(n) < 0.8, "Bokaro Steel Plant", "CMO Stockyard Bokaro")
    priority = rng.choice(["LOW", "NORMAL", "HIGH", "URGENT"], n, p=[0.15, 0.55, 0.2, 0.1])

    trans = world.transporters
    ti = rng.integers(0, len(trans), n)
    months = ctx.days.to_numpy()[day_idx].astype("datetime64[M]").astype(int)
    on_time = 0.82 + 0.15 * trans.quality.to_numpy()[ti] + 0.01 * np.sin(
        months / 3 + trans.phase.to_numpy()[ti])
    service = on_time  # how reliable the transporter really is; on_time is what it reports
    if ctx.scenario is not None and ctx.scenario.name == "supplier_decline":
        collapsed = trans.quality.to_numpy()[ti] < 0.95
        service = np.where(collapsed, rng.uniform(0.30, 0.60, n), on_time)
        on_time = np.where(collapsed, rng.uniform(0.98, 1.0, n), on_time)
    transporter = np.where(rail, RAIL_TRANSPORTER, trans.transporter.to_numpy()[ti])
    on_time = np.where(rail, 0.80, on_time).round(3)
    service = np.where(rail, 0.80, service)

    rain = ctx.rain[day_idx] * rng.lognormal(0, 0.25, n)
    monsoon = ctx.monsoon[day_idx]
    festival = ctx.festival[day_idx]
    winter = np.isin(ctx.days.month.to_numpy()[day_idx], [12, 1])
    fog = winter & (rain == 0) & (rng.random(n) < 0.3) & ((hour < 9) | (hour >= 20))
    weather = np.select([rain > 25, rain > 0, fog], ["HEAVY_RAIN", "RAIN", "FOG"],
                        np.where(rng.random(n) < 0.5, "CLEAR", "CLOUDY"))
    busy = ((hour >= 8) & (hour < 20)).astype(float) + festival
    traffic = np.select([busy + rng.normal(0, 0.5, n) > 1.2, busy + rng.normal(0, 0.5, n) > 0.4],
                        ["HIGH", "MEDIUM"], "LOW")
    fuel_price = (ctx.fuel_price[day_idx] + rng.normal(0, 0.2, n)).round(2)
    irregular = rng.random(n) < 0.025
    variance = np.where(irregular, rng.choice([-1, 1], n) * rng.uniform(0.10, 0.30, n),
                        rng.normal(0, 0.012, n))
    weighbridge = (tonnage * (1 + variance)).round(2)
    speed = np.where(rail, 24.0, 38.0)
    planned = (distance / speed + np.where(rail, 6.0, 1.5)).round(2)

    frame = pd.DataFrame({
        "dispatched_at": pd.to_datetime(dispatched), "origin": origin,
        "loading_point": loading_point, "shift": shift, "destination": destination,
        "route": route, "distance_km": distance.round(1), "mode": mode,
        "vehicle_type": vehicle, "material": material, "tonnage": tonnage,
        "weighbridge_tonnes": weighbridge, "priority": priority, "customer": customer,
        "customer_segment": segment, "transporter": transporter,
        "transporter_on_time_rate": on_time, "weather": weather,
        "rainfall_mm": rain.round(1), "traffic": traffic, "is_festival": festival,
        "is_monsoon": monsoon, "fuel_price": fuel_price, "planned_transit_hours": planned,
    })
    _shipment_outcomes(frame, rng, route_no, irregular, info.code.to_numpy().astype(str),
                       siding, service)
    return frame.sort_values("dispatched_at", kind="stable").reset_index(drop=True)


def _hour_weights() -> np.ndarray:
    w = np.array([2, 1, 1, 1, 1, 2, 5, 7, 8, 8, 8, 7, 6, 7, 8, 8, 7, 6, 5, 4, 3, 3, 2, 2], float)
    return np.asarray(w / w.sum())


def _shipment_outcomes(f: pd.DataFrame, rng: np.random.Generator, route_no: np.ndarray,
                       irregular: np.ndarray, code: np.ndarray, siding: np.ndarray,
                       on_time: np.ndarray) -> None:
    """Outcomes, each caused by the context columns above plus noise."""
    n = len(f)
    road = (f["mode"] == "ROAD").to_numpy()
    rain = f.rainfall_mm.to_numpy()
    festival = f.is_festival.to_numpy()
    traffic_high = (f.traffic == "HIGH").to_numpy()
    traffic_med = (f.traffic == "MEDIUM").to_numpy()
    dist = f.distance_km.to_numpy()
    tonnage = f.tonnage.to_numpy()
    fuel_price = f.fuel_price.to_numpy()
    material = f.material.to_numpy()

    # Delay: rain (steep once the drains overflow at 60 mm), fog, traffic, festivals,
    # night shift, loading point congestion, the transporter's reliability, distance.
    rain_effect = 0.06 * np.minimum(rain, 60) + 0.6 * np.maximum(rain - 60, 0)
    rain_effect *= np.where(route_no == 1, 0.5, 1.0)
    delay = (rain_effect
             + np.where(f.weather == "FOG", np.where(road, 3.0, 2.0), 0.0)
             + np.where(traffic_high, np.where(road, 4.0, 1.0), 0.0) * np.where(
                 route_no == 0, 1.5, 1.0)
             + np.where(traffic_med, 1.0, 0.0)
             + 4.0 * festival * np.where(route_no == 2, 0.3, 1.0)
             + np.where(f["shift"] == "C", 1.0, 0.0)
             + (f.loading_point == "LP3").to_numpy() * 1.5 - (f.loading_point == "WT").to_numpy()
             + np.where(road, (0.97 - on_time) * 22, 0.0)
             + dist / 120
             - np.where(f.priority == "URGENT", 2.0, 0.0) - np.where(f.priority == "HIGH", 1.0, 0)
             + 1.5 * f.is_monsoon.to_numpy())
    delay = delay + rng.normal(0, 1.35, n)
    f["actual_transit_hours"] = (f.planned_transit_hours + delay).round(2)
    f["delay_hours"] = delay.round(2)

    # Fuel: tonne-km for rakes, km and load for trucks; traffic and rain cost more.
    fuel = np.where(road, dist * (0.26 + 0.006 * tonnage), tonnage * dist * 0.0026)
    fuel *= (1 + 0.12 * traffic_high + 0.05 * traffic_med + 0.1 * (rain > 25))
    f["fuel_litres"] = (fuel * rng.lognormal(0, 0.33, n)).round(1)

    # Cost: freight tariffs indexed to diesel through their fuel clauses.
    fuel_index = fuel_price / 92.0
    freight = np.where(road, tonnage * dist * 3.6 * fuel_index ** 1.6 + 150 * tonnage,
                       tonnage * dist * 1.45 * fuel_index ** 1.2 + 180 * tonnage)
    freight *= 1 + 0.08 * (f.vehicle_type == "BCN").to_numpy() + 0.15 * (
        f.priority == "URGENT").to_numpy()
    f["total_cost"] = (freight * rng.lognormal(0, 0.36, n)).round(0)
    f["demurrage_cost"] = (np.maximum(delay - 6, 0) * np.where(road, 300, 4500)).round(0)

    # Condition: moisture-sensitive coils in open wagons or trucks in the rain, long hauls,
    # road handling, the transporter's care.
    sensitive = np.isin(material, ["CR_COIL", "HR_COIL", "WIRE_ROD"])
    open_vehicle = np.isin(f.vehicle_type.to_numpy(), ["BOXN", "BOST", "BRN", "BOBRN"]) | road
    damage = (2.2 * (sensitive & open_vehicle & (rain > 2))
              + 0.03 * np.minimum(rain, 60) * sensitive
              + dist / 300 + 0.6 * road + np.where(road, (0.97 - on_time) * 8, 0.0)
              + 0.8 * (material == "CR_COIL") + 0.4 * festival
              + rng.logistic(0, 0.2, n))
    condition = np.select([damage > 3.4, damage > 2.2], ["MAJOR_DAMAGE", "MINOR_DAMAGE"], "GOOD")
    f["delivery_condition"] = condition

    # Incidents: mostly irregular loads (weighbridge far from the declared tonnage).
    p_incident = np.where(irregular, 0.5, 0.007 + 0.0002 * np.minimum(rain, 60))
    incident = (rng.random(n) < p_incident).astype(int)
    f["incident"] = incident

    # Rating: delay and damage hurt; automotive buyers are stricter; a collapsed
    # transporter (no tracking, no calls back) loses the customer outright.
    rating = (4.5 - 0.13 * np.maximum(delay, 0)
              - 1.0 * (condition == "MINOR_DAMAGE") - 2.2 * (condition == "MAJOR_DAMAGE")
              - 0.4 * (f.customer_segment == "AUTOMOTIVE").to_numpy()
              - 0.5 * ((f.priority == "URGENT").to_numpy() & (delay > 2))
              + np.where(road, 8.0 * (np.maximum(on_time, 0.7) - 0.9), 0.0)
              - 4.0 * (road & (on_time < 0.7))
              + rng.normal(0, 0.95, n))
    f["customer_rating"] = np.clip(np.rint(rating), 1, 5).astype(int)

    high = (incident == 1) | (condition == "MAJOR_DAMAGE") | (delay > 12)
    medium = (condition == "MINOR_DAMAGE") | (delay > 6)
    level = np.select([high, medium], [2, 1], 0)
    level = np.minimum(level + (rng.random(n) < 0.08), 2)  # audits flag one in twelve higher
    f["risk_level"] = np.array(["LOW", "MEDIUM", "HIGH"])[level]

    # Hindsight choices: the option that turned out best, as a rule on the context,
    # with the share of days where something unrecorded decided otherwise.
    best_route = np.select([rain > 20, traffic_high | (festival == 1)], [1, 2], 0)
    route_names = [np.char.add(code, f"-R{k}") for k in (1, 2, 3)]
    best = np.choose(best_route, route_names)
    alt = np.choose(rng.integers(0, 3, n), route_names)
    f["best_route"] = np.where(rng.random(n) < 0.2, alt, best)

    rail_cpt = 1.45 * dist * fuel_index ** 1.2 + 180 + np.where(siding, 0, 400)
    road_cpt = 3.6 * dist * fuel_index ** 1.6 + 150
    wagon = pd.Series(material).map(RAIL_WAGON_FOR).to_numpy()
    truck = np.where(np.isin(material, ["PLATE", "HR_COIL", "CR_COIL"]), "TRAILER_28T",
                     "TRUCK_16T")
    cheapest = np.where(rail_cpt < road_cpt, np.char.add("RAIL-", wagon.astype(str)),
                        np.char.add("ROAD-", truck))
    options = sorted(set(cheapest))
    f["cheapest_option"] = _pick(rng, cheapest, options, 0.22)

    weekday = f.dispatched_at.dt.day_of_week.to_numpy()
    lp = pd.Series(material).map(PREFERRED_LP).to_numpy().astype(str)
    lp = np.where(road & (lp == "WT"), "LP3", lp)
    slot_shift = np.select([(festival == 1) | (weekday == 0), tonnage > 1000], ["C", "A"], "B")
    fastest = np.char.add(np.char.add(lp, "-"), slot_shift)
    f["fastest_slot"] = _pick(rng, fastest, sorted(set(fastest)), 0.2)


def _daily_demand(ctx: DayContext, rng: np.random.Generator, world_seed: int) -> pd.DataFrame:
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


def _telemetry(ctx: DayContext, world: World, rng: np.random.Generator) -> pd.DataFrame:
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


def _scorecards(ctx: DayContext, world: World, rng: np.random.Generator,
                last_labelled: pd.Timestamp) -> pd.DataFrame:
    months = pd.date_range(ctx.days[0], ctx.days[-1], freq="MS")
    if len(months) == 0:
        return pd.DataFrame(columns=[c.name for c in schema.supplier_scorecards.columns
                                     if c.name != "id"])
    tr = world.transporters
    frames = []
    for month in months:
        k = month.year * 12 + month.month
        q = np.clip(tr.quality.to_numpy() + 0.12 * np.sin(k / 4 + tr.phase.to_numpy()), 0, 1)
        q_next = np.clip(tr.quality.to_numpy() + 0.12 * np.sin((k + 3) / 4 + tr.phase.to_numpy())
                         + rng.normal(0, 0.04, len(tr)), 0, 1)
        rating = np.select([q_next > 0.62, q_next > 0.3], ["A", "B"], "C").astype(object)
        if month > last_labelled:  # next quarter not over yet: no label
            rating[:] = None
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


def _dispatch(ctx: DayContext, rng: np.random.Generator) -> pd.DataFrame:
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
        "best_action": _pick(rng, best, ACTIONS, 0.25),
    })


def generate(start: date, days: int, *, seed: int = 42, scenario: str | None = None,
             shipments_per_day: int = SHIPMENTS_PER_DAY,
             labelled_until: date | None = None) -> dict[str, pd.DataFrame]:
    """All five tables for `days` days from `start`, deterministic for the arguments.

    `labelled_until` is the last month whose next-quarter supplier rating is known
    (by default three months before the last day).
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    drift = get_scenario(scenario) if scenario else None
    world = make_world(seed)
    rng = np.random.default_rng([seed, start.toordinal(), days])
    day_index = pd.date_range(pd.Timestamp(start), periods=days, freq="D")
    ctx = _day_context(day_index, rng, drift)
    last = pd.Timestamp(labelled_until) if labelled_until else day_index[-1] - pd.DateOffset(
        months=3)
    return {
        "shipments": _shipments(ctx, world, rng, shipments_per_day),
        "daily_demand": _daily_demand(ctx, rng, seed),
        "equipment_telemetry": _telemetry(ctx, world, rng),
        "supplier_scorecards": _scorecards(ctx, world, rng, last),
        "dispatch_decisions": _dispatch(ctx, rng),
    }


class DatabaseExistsError(Exception):
    """`init-db` found data in the target database and was not told to replace it."""


def database_has_data(engine: Engine) -> bool:
    inspector = sa.inspect(engine)
    present = [t for t in schema.TABLES if inspector.has_table(t)]
    if not present:
        return False
    with engine.connect() as conn:
        return any(conn.execute(sa.select(sa.func.count()).select_from(schema.TABLES[t]))
                   .scalar() for t in present)


def write_tables(engine: Engine, tables: dict[str, pd.DataFrame], *,
                 progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Append frames to their tables in one transaction: all rows land, or none."""
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        schema.metadata.create_all(conn)
        for name, frame in tables.items():
            frame = frame.astype(object).where(frame.notna(), None)
            records = frame.to_dict("records")
            for i in range(0, len(records), 50_000):
                conn.execute(schema.TABLES[name].insert(), records[i:i + 50_000])
            counts[name] = len(records)
            if progress:
                progress(name, len(records))
    return counts


def init_db(engine: Engine, *, days: int = 730, seed: int = 42, force: bool = False,
            end: date | None = None, shipments_per_day: int = SHIPMENTS_PER_DAY,
            progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Create the tables and fill them with `days` days ending yesterday (or `end`)."""
    if database_has_data(engine):
        if not force:
            raise DatabaseExistsError(
                f"{loading.describe_url(engine.url.render_as_string())} already holds data; "
                "pass --force to replace it")
        schema.metadata.drop_all(engine)
    last_day = end or (datetime.now().date() - timedelta(days=1))
    start = last_day - timedelta(days=days - 1)
    tables = generate(start, days, seed=seed, shipments_per_day=shipments_per_day)
    return write_tables(engine, tables, progress=progress)


def simulate(engine: Engine, *, days: int, seed: int = 42, scenario: str | None = None,
             shipments_per_day: int = SHIPMENTS_PER_DAY,
             progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Append `days` days after the newest shipment: tomorrow's data, maybe drifted."""
    if scenario:
        get_scenario(scenario)  # fail before touching anything
    newest = loading.newest_time(engine, "shipments") if sa.inspect(engine).has_table(
        "shipments") else None
    if newest is None:
        raise schema.DataError("the database has no shipments yet; run init-db first")
    start = newest.date() + timedelta(days=1)
    newest_month = loading.newest_time(engine, "supplier_scorecards")
    tables = generate(start, days, seed=seed, scenario=scenario,
                      shipments_per_day=shipments_per_day)
    if newest_month is not None:  # months already on file are not written twice
        cards = tables["supplier_scorecards"]
        tables["supplier_scorecards"] = cards[cards.month > pd.Timestamp(newest_month)]
    return write_tables(engine, tables, progress=progress)
